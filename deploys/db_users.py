"""
PostgreSQL roles, databases and grants, idempotent, passwords never in clear.

    pyinfra -y inventories/lab.py deploys/db_users.py

Replaces "user created and permissions granted" by hand after
`FATAL: password authentication failed for user "quant_user"`. Settings: the host's `postgres`
and `db_*` data (documented, with their defaults, in tasks/settings/postgres.py), validated before
any change. A second run reports no changes.
"""
from tasks.operations import recap
from tasks.operations.db_users import db_users
from tasks.operations.refusals import quiet_refusals

quiet_refusals()
recap.install()  # the recap and QUANT_REPORT's run document at the end of the run

db_users()
