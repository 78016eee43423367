"""
The backend's uvicorn --reload fix: WATCHFILES_FORCE_POLLING=true and `--reload-delay 2`, in the
Dockerfile CMD (JSON-array form) and/or the compose service, and in the running container
(recreated only when it differs, verified, rolled back on failure). Idempotent.

    pyinfra -y inventories/lab.py deploys/fix_backend_reload.py

Settings: the host's `backend` block (tasks/settings/backend.py: defaults and rules).
"""
from tasks.operations import recap
from tasks.operations.backend_reload import fix_backend_reload
from tasks.operations.refusals import quiet_refusals

quiet_refusals()
recap.install()  # the recap and QUANT_REPORT's run document at the end of the run

fix_backend_reload()
