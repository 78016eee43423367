"""
PostgreSQL facts: the catalog (roles, databases, grants) and whether stored passwords match.

Read-only, and no stored verifier ever leaves the server: the catalog fact asks for a *digest*
of each verifier (salt and iteration count in clear, ``sha256`` of the keys) and the controller
decides ``match`` / ``mismatch`` / ``md5-match-upgrade`` / ``absent`` by recomputing the same
digest from the desired password. Even ``-vvv`` (fact output) shows only that digest.

Every fact takes ``target``, a :class:`tasks.core.pg_exec.PgTarget`, and builds its command
with :func:`query_command`: in ``psql`` mode the connecting password travels as a 0600 libpq
password file in a fresh 0700 directory that the same command removes, never on a command line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import secrets
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from pyinfra import host as current_host
from pyinfra.api import FactBase, StringCommand
from pyinfra.api.exceptions import FactProcessError

from tasks.core.pg_catalog import Catalog, catalog_query, parse_catalog_json
from tasks.core.pg_exec import PgTarget, pgpass_line, psql_argv, shell_command
from tasks.core.pg_sql import _literal_array
from tasks.core.scram import md5_verifier, scram_verifier
from tasks.settings.types import SecretSource

_TMP_ROOT = "/tmp"


# --- the private transport facts and operations share ---------------------------------------


def private_dir() -> str:
    """A fresh path for secrets on the target. Named on the controller; ``mkdir -m 0700`` (no
    -p) fails if the path exists, so nobody can pre-plant it. Files inside are 0600; the
    command that uses them removes the directory."""
    return f"{_TMP_ROOT}/quant-pg-{secrets.token_hex(8)}"


def pgpass_content(target: PgTarget) -> str | None:
    """The libpq password file for ``target``'s superuser, or None when it needs none."""
    if target.mode != "psql" or target.password_source is None:
        return None
    return pgpass_line(target.user, target.password_source.read())


def run_and_clean(command: str, workdir: str) -> str:
    """``command``, then remove ``workdir`` whatever happened, keeping the command's exit code."""
    return f"{command}; rc=$?; rm -rf {shlex.quote(workdir)}; exit $rc"


def upload_private(host, files: Mapping[str, str]) -> str:
    """Fact-time transport (facts cannot yield uploads): a fresh 0700 directory holding
    ``files`` (0600). The caller's command must remove it (see :func:`run_and_clean`)."""
    workdir = private_dir()
    ok, _ = host.run_shell_command(StringCommand("mkdir", "-m", "0700", workdir))
    if not ok:
        raise OSError(f"cannot create {workdir} on {host.name}")
    for name, content in files.items():
        if not host.put_file(io.StringIO(content), f"{workdir}/{name}"):
            host.run_shell_command(StringCommand("rm", "-rf", workdir))
            raise OSError(f"cannot upload {workdir}/{name} to {host.name}")
    return workdir


def query_command(host, target: PgTarget, sql: str) -> StringCommand:
    """A fact's command running one read-only ``sql`` through psql for ``target`` (every
    PostgreSQL fact uses it): on the command line in docker mode (no secret involved), else
    from a fresh 0700 directory holding the query and the 0600 password file, removed by the
    same command."""
    pgpass = pgpass_content(target)
    if pgpass is None:
        return StringCommand(*(shlex.quote(a) for a in psql_argv(target)), "-c", shlex.quote(sql))
    workdir = upload_private(host, {"pgpass": pgpass, "query.sql": sql + ";\n"})
    argv = psql_argv(target, passfile=f"{workdir}/pgpass")
    return StringCommand(run_and_clean(shell_command(argv, f"{workdir}/query.sql"), workdir))


# --- password status without the verifier ----------------------------------------------------


def password_digest_query(roles: Iterable[str]) -> str:
    """Per role: NULL (no password), ``SCRAM-SHA-256$<iter>:<salt>$<sha256 of the keys>``,
    ``md5$<sha256 of the md5 hash>`` or ``other``. The verifier itself never leaves the server."""
    names = sorted(set(roles))
    if not names:
        return "'{}'::json"
    pw = "a.rolpassword"
    keys = f"split_part({pw}, '$', 3)"
    return f"""(SELECT coalesce(json_object_agg(a.rolname, CASE
      WHEN {pw} IS NULL OR {pw} = '' THEN NULL
      WHEN {pw} LIKE 'SCRAM-SHA-256$%' THEN split_part({pw}, '$', 1) || '$' || split_part({pw}, '$', 2)
        || '$' || encode(pg_catalog.sha256(convert_to({keys}, 'UTF8')), 'hex')
      WHEN {pw} ~ '^md5[0-9a-f]{{32}}$' THEN
        'md5$' || encode(pg_catalog.sha256(convert_to({pw}, 'UTF8')), 'hex')
      ELSE 'other' END), '{{}}'::json)
    FROM pg_catalog.pg_authid a WHERE a.rolname = ANY({_literal_array(names)}))"""


def _sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def password_status_from_digest(digest: str | None, password: str, username: str) -> str:
    """``absent`` / ``match`` / ``md5-match-upgrade`` / ``mismatch``, decided on the controller
    from what :func:`password_digest_query` returns (same meaning as
    :func:`tasks.core.scram.password_status`)."""
    if not digest:
        return "absent"
    if digest.startswith("SCRAM-SHA-256$"):
        try:
            _, params, keys_hash = digest.split("$")
            iterations, salt = params.split(":")
            mine = scram_verifier(
                password, salt=base64.b64decode(salt, validate=True), iterations=int(iterations)
            )
        except ValueError:
            return "mismatch"
        same = hmac.compare_digest(_sha256_hex(mine.split("$")[2]), keys_hash)
        return "match" if same else "mismatch"
    if digest.startswith("md5$"):
        same = hmac.compare_digest(_sha256_hex(md5_verifier(password, username)), digest[4:])
        return "md5-match-upgrade" if same else "mismatch"
    return "mismatch"


def stand_in(status: str, password: str, username: str) -> str | None:
    """A locally made stored value that :func:`tasks.core.scram.password_status` judges exactly as
    the server's real one was judged, so :func:`tasks.core.pg_roles.plan_role` can plan from it."""
    if status == "absent":
        return None
    if status == "match":
        return scram_verifier(password)
    if status == "md5-match-upgrade":
        return md5_verifier(password, username)
    return "unknown"  # any other format: password_status() says "mismatch"


# --- the catalog -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PgState:
    """What :class:`PostgresCatalog` returns: the catalog (roles, memberships, databases,
    schemas, objects, ACLs, default ACLs) and, per role asked about, whether its stored password
    matches the desired one (the verifier itself is not kept)."""

    catalog: Catalog
    password_status: Mapping[str, str]


class PostgresCatalog(FactBase):
    """
    Roles (attributes, memberships, password status), databases, schemas, objects and their
    privileges, and default privileges, as seen from ``database``: one psql round trip.

    + target: a ``PgTarget`` (superuser connection)
    + database: database to read schemas/objects/default privileges from
    + passwords: ``{role: SecretSource}``: roles whose password is checked (on the controller)
    + schemas: limit objects to these schemas (``None``: all non-system schemas)

    .. code:: python

        state = host.get_fact(PostgresCatalog, target=target, database="quant",
                              passwords={"quant_user": SecretSource(file="/run/secrets/quant_user")})
        state.password_status["quant_user"]  # "match", "mismatch", "md5-match-upgrade", "absent"
    """

    def command(
        self,
        target: PgTarget,
        database: str = "postgres",
        passwords: Mapping[str, SecretSource] | None = None,
        schemas: Iterable[str] | None = None,
    ):
        self._passwords = dict(passwords or {})
        query = (
            "SELECT json_build_object('catalog', ("
            + catalog_query(schemas=None if schemas is None else list(schemas))
            + "), 'passwords', "
            + password_digest_query(self._passwords)
            + ")"
        )
        return query_command(current_host, replace(target, database=database), query)

    def process(self, output):
        text = "\n".join(output)
        try:
            doc = json.loads(text)
            catalog = parse_catalog_json(json.dumps(doc["catalog"]))
            digests = doc["passwords"]
        except (ValueError, KeyError, TypeError) as exc:
            raise FactProcessError(f"unexpected catalog output ({len(text)} chars): {exc}") from None
        statuses = {}
        roles = dict(catalog.roles)
        for role, source in self._passwords.items():
            if role not in roles:
                continue
            password = source.read()
            statuses[role] = status = password_status_from_digest(digests.get(role), password, role)
            # The stored verifier stays on the server: plan from a stand-in with the same status.
            roles[role] = replace(roles[role], password=stand_in(status, password, role), password_known=True)
        return PgState(replace(catalog, roles=roles), statuses)
