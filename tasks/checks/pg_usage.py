"""What a PostgreSQL role can use, proven by logging in as it: the check db_users runs after it
changed grants (tasks.operations.postgres.grants).

The role's password goes to the target in a 0600 password file (a fresh 0700 directory the same
command removes; into the container on stdin), never on a command line.
"""

from __future__ import annotations

import json
import shlex

from pyinfra.api import StringCommand

from tasks.checks.runner import Broken, NotYet
from tasks.core.pg_catalog import Catalog
from tasks.core.pg_exec import PgTarget, pgpass_line, psql_tcp_argv, shell_command, with_passfile_on_stdin
from tasks.core.pg_grants import GrantSpec, usage_sql
from tasks.facts.postgres import run_and_clean, upload_private
from tasks.operations import runner
from tasks.settings.types import SecretSource

# Where psql listens inside the database container (docker mode logs in over TCP on the
# container's loopback, so pg_hba's `host ... scram-sha-256` rule is what is exercised).
CONTAINER_PG_PORT = 5432


def query_as_role(host, target: PgTarget, role: str, password_source: SecretSource, database: str, sql: str):
    """Log in as ``role`` over TCP with its password (password file, never argv) and run
    ``sql``. Returns (ok, stdout, stderr)."""
    pgpass = pgpass_line(role, password_source.read())
    workdir = upload_private(host, {"pgpass": pgpass})
    passfile = f"{workdir}/pgpass"
    flags = ["-w", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=terse"]
    if target.mode == "psql":
        assert target.host is not None  # PgTarget validated it: psql mode has a host
        tcp = psql_tcp_argv(flags, target.host, target.port, role, database, sql)
        argv = ["env", "PGCONNECT_TIMEOUT=5", f"PGPASSFILE={passfile}", *tcp]
        command = f"chmod 0600 {shlex.quote(passfile)} && " + " ".join(shlex.quote(a) for a in argv)
    else:
        # The password file goes into the container on stdin, into a mktemp file removed after.
        inner = with_passfile_on_stdin(
            psql_tcp_argv(flags, "127.0.0.1", CONTAINER_PG_PORT, role, database, sql)
        )
        assert target.container is not None  # PgTarget validated it: docker mode has a container
        argv = ["docker", "exec", "-i", "-u", target.os_user, target.container, "sh", "-c", inner]
        command = shell_command(argv, passfile)
    ok, output = runner.run(host, StringCommand(run_and_clean(command, workdir)))
    return ok, "\n".join(output.stdout_lines), " ".join(output.stderr_lines)


def usage_probe(
    host,
    target: PgTarget,
    role: str,
    source: SecretSource,
    database: str,
    grants: list[GrantSpec],
    catalog: Catalog,
    exclusive: bool,
):
    """A probe: ``role`` logs in to ``database`` and uses what ``grants`` give it (real reads of
    granted tables), and every privilege the settings name for it is held; with ``exclusive``,
    nothing beyond them (what PUBLIC holds, every role holds: not counted against it)."""
    sql, uses = usage_sql(grants, catalog)

    def probe():
        ok, out, err = query_as_role(host, target, role, source, database, sql)
        if not ok:
            if "permission denied" in err:
                raise Broken(f"cannot use what it was granted: {err.strip()[:200]}")
            raise NotYet(f"probe failed: {err.strip()[:200]}")
        rows = json.loads(out.strip().splitlines()[-1])
        lacking = [r["what"] for r in rows if r["want"] and r["all"] is False]
        # What PUBLIC holds every role holds; only exclusive mode with PUBLIC listed revokes it.
        extra = [r["what"] for r in rows if not r["want"] and r["any"] and not r["public"]]
        if lacking:
            raise Broken("lacks " + ", ".join(lacking))
        if extra and exclusive:
            raise Broken("holds beyond the settings: " + ", ".join(extra))
        granted = sum(1 for r in rows if r["want"])
        via_public = sum(1 for r in rows if not r["want"] and r["public"])
        absent = len(rows) - granted - via_public - len(extra)
        note = f"; also holds (exclusive off, left alone): {', '.join(extra)}" if extra else ""
        return (
            f"{granted} granted privileges hold, {absent} others absent ({via_public} via PUBLIC), "
            f"{len(uses)} tables read{note}"
        )

    return probe
