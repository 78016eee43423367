"""
The db_users deploy: PostgreSQL roles (and memberships), then databases, then grants per database.

Settings: the host's ``postgres`` block (how to reach the server) and ``db`` block (``db_roles``,
``db_databases``, ``db_grants``, ``db_default_privileges``, ``db_exclusive``, ``db_verify``), both
documented and validated in :mod:`tasks.settings.postgres`; the operations are in
:mod:`tasks.operations.postgres`.
"""

from __future__ import annotations

from pyinfra import host

from tasks import settings
from tasks.core.pg_exec import PgTarget
from tasks.operations import postgres
from tasks.operations.refusals import deploy
from tasks.settings.postgres import DbSettings


@deploy("PostgreSQL roles and grants")
def db_users(db: DbSettings | None = None, target: PgTarget | None = None):
    """Each operation changes only what differs and verifies only when it changed something.

    + db: the roles, databases and grants to apply (default: the host's ``db`` settings;
      remediation passes ``db.only_roles([...])``)
    + target: the superuser connection (default: the host's ``postgres`` settings)
    """
    db = db if db is not None else settings.of_host(host, "db")
    target = target if target is not None else settings.of_host(host, "postgres").target
    for r in db.roles:
        postgres.role(
            name=f"PostgreSQL role {r.name}",
            target=target,
            exclusive_membership=db.exclusive,
            verify=db.verify,
            verify_database=db.login_database(r.name, target.database),
            **r.operation_kwargs(),
        )
    for d in db.databases:
        postgres.database(name=f"PostgreSQL database {d.name}", database=d.name, target=target, owner=d.owner)
    grant_specs = db.grant_specs()
    for database in db.grant_databases():
        postgres.grants(
            name=f"PostgreSQL grants in {database}",
            database=database,
            target=target,
            grants=grant_specs,
            exclusive=db.exclusive,
            logins=db.logins(),
            verify=db.verify,
        )
