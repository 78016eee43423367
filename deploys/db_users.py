"""
PostgreSQL roles, databases and grants, idempotent, passwords never in clear.

    pyinfra -y inventories/lab.py deploys/db_users.py

Replaces "user created and permissions granted" by hand after
`FATAL: password authentication failed for user "quant_user"`. Settings: the host's `postgres`
and `db_*` data (documented in tasks/operations/db_users.py, defaults in inventories/group_data/all.py),
validated before any change. A second run reports no changes.
"""
from pyinfra import host

from tasks.operations.db_users import db_users, load_db_settings
from tasks.operations.refusals import quiet_refusals

quiet_refusals()

settings = load_db_settings(host.name, host.data)

db_users(settings)
