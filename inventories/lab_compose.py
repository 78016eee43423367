"""This machine's compose-style lab, over @local.

`scripts/lab up --style compose` must have run: the stack is a compose project (the lab prefix)
started from .lab/<prefix>/docker-compose.yml. MLflow is named by that file and its service, as
for a stack you run with compose yourself; its container, image, environment and secrets are the
compose file's. QUANTLAB_PREFIX selects another lab than `quant`; QUANTLAB_MLFLOW_IMAGE=mlflow3
sets MLflow's image to the lab's 3.x one (the deploy then writes it into the compose file).
"""
import os

from tasks.lab.inventory import lab_compose_host_data, lab_state

_data = lab_compose_host_data(os.environ.get("QUANTLAB_PREFIX"))
if os.environ.get("QUANTLAB_MLFLOW_IMAGE"):
    _data["mlflow"]["image"] = lab_state(os.environ.get("QUANTLAB_PREFIX"))["images"][os.environ["QUANTLAB_MLFLOW_IMAGE"]]

lab_compose = [("@local", _data)]
