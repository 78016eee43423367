"""
Verify the whole stack on every host: containers, PostgreSQL and its login roles, MLflow (health,
REST API, an artifact round trip, workers), Redis, S3 and the backend, and the logs since a time.

    pyinfra -y inventories/lab.py deploys/verify_stack.py
    QUANTLAB_VERIFY_REPORT=verify.json QUANTLAB_VERIFY_SINCE=30m pyinfra -y ... deploys/verify_stack.py

Read-only: a passing run reports no changes; a failing check fails the host (non-zero exit).
Settings: the host's `stack` block (tasks/settings/stack.py); log signatures from the host's catalog
(tasks/core/signatures.yml, or `remediate.catalog`).
"""
from tasks.checks.stack import verify
from tasks.operations import recap
from tasks.operations.refusals import quiet_refusals

quiet_refusals()
recap.install()  # the recap and QUANT_REPORT's run document at the end of the run

verify(name="Verify the stack")  # settings from host data `stack`, validated before any check
