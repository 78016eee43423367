"""How to reach PostgreSQL: pure command building for host-side psql or ``docker exec``.

Secrets never go on a command line: pyinfra's remote command lines (including ``_env`` values,
which it renders as ``export VAR=...`` into the command) are visible in ``ps`` on the target.
So:

- SQL that may carry a secret (password verifiers) is uploaded as a 0600 file and fed on stdin
  (:func:`shell_command`), then removed;
- in ``psql`` mode the connecting password travels in a libpq password file, uploaded with mode
  0600 and named by ``PGPASSFILE`` (only its path is on the command line); libpq ignores a
  password file that is group/world readable, so the mode is also a correctness requirement.
  ``PGPASSWORD`` is never used: it would have to be on the command line.
- in ``docker`` mode psql runs inside the database container as the ``postgres`` OS user over
  the local socket (peer/trust auth), so no password is needed at all.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from tasks.settings.types import SecretSource

PSQL_FLAGS = ("-X", "-q", "-v", "ON_ERROR_STOP=1", "-At")  # no psqlrc, quiet, stop on error
_CONTAINER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")  # docker's own name rule
_HOST = re.compile(r"[A-Za-z0-9._:\-\[\]%]+\Z|/\S*\Z")  # name, IPv4/IPv6, or a socket directory


@dataclass(frozen=True)
class PgTarget:
    """Where and how to run SQL.

    - ``mode="psql"``: psql on the target host connects to ``host``:``port`` as ``user``;
      ``password_source`` is a :class:`tasks.settings.types.SecretSource` read on the controller,
      or None (e.g. trust/peer auth, or a ``.pgpass`` already on the host).
    - ``mode="docker"``: ``docker exec -i -u <os_user> <container> psql`` over the container's
      socket; no host/port/password.
    """

    mode: Literal["psql", "docker"]
    database: str = "postgres"
    user: str = "postgres"
    host: str | None = None
    port: int = 5432
    container: str | None = None
    os_user: str = "postgres"  # docker mode: the OS user psql runs as inside the container
    password_source: SecretSource | None = field(default=None)
    connect_timeout: int = 10

    def __post_init__(self):
        validate_target(self)


def _check_name(what: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    if "\x00" in value or "\n" in value:
        raise ValueError(f"{what} {value!r} contains a NUL or newline")


def validate_target(t: PgTarget) -> None:
    if t.mode not in ("psql", "docker"):
        raise ValueError(f"mode must be 'psql' or 'docker', not {t.mode!r}")
    _check_name("database", t.database)
    _check_name("user", t.user)
    if isinstance(t.connect_timeout, bool) or not isinstance(t.connect_timeout, int) or t.connect_timeout < 1:
        raise ValueError("connect_timeout must be a positive number of seconds")
    if t.mode == "psql":
        if t.container is not None:
            raise ValueError("container is only used in docker mode")
        _check_name("host", t.host)
        assert t.host is not None  # _check_name refused anything but a non-empty string
        if not _HOST.match(t.host):
            raise ValueError(f"host {t.host!r} is not a host name, IP address or socket directory")
        if isinstance(t.port, bool) or not isinstance(t.port, int) or not 1 <= t.port <= 65535:
            raise ValueError(f"port must be an integer 1-65535, not {t.port!r}")
        _check_password_source(t.password_source)
    else:
        if not isinstance(t.container, str) or not _CONTAINER.match(t.container):
            raise ValueError(
                f"docker mode needs a container name ([A-Za-z0-9][A-Za-z0-9_.-]*), got {t.container!r}"
            )
        if t.host is not None:
            raise ValueError("docker mode connects over the container's socket: drop host")
        if t.password_source is not None:
            raise ValueError(
                "docker mode uses the container's local socket as the postgres OS user "
                "(peer auth): drop password_source"
            )
        _check_name("os_user", t.os_user)
        if t.os_user.startswith("-"):
            raise ValueError(f"os_user {t.os_user!r} must not start with '-'")


def _check_password_source(source: object) -> None:
    # The source's own shape (env or file, a valid name) is the settings layer's to check.
    if source is not None and not callable(getattr(source, "read", None)):
        raise ValueError(
            "password_source must be a secret source (tasks.settings.types.SecretSource), "
            f"not a {type(source).__name__}"
        )


def _dbname_arg(database: str) -> str:
    # psql treats a -d value containing "=" or a URI prefix as a connection string; quote such
    # names as conninfo so a database literally named "a=b" stays a name.
    if "=" in database or database.startswith(("postgresql://", "postgres://")):
        return "dbname='" + database.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return database


def psql_argv(target: PgTarget, *, passfile: str | None = None) -> list[str]:
    """The argv that runs psql for ``target`` reading SQL from stdin.

    ``passfile``: path on the target host of the 0600 password file (see :func:`pgpass_line`),
    required when ``target.password_source`` is set.
    """
    validate_target(target)
    if target.mode == "docker":
        assert target.container is not None  # validate_target: docker mode needs a container
        if passfile is not None:
            raise ValueError("docker mode takes no password file")
        return [
            "docker", "exec", "-i", "-u", target.os_user, target.container,
            "psql", *PSQL_FLAGS, "-U", target.user, "-d", _dbname_arg(target.database),
        ]  # fmt: skip
    assert target.host is not None  # validate_target: psql mode needs a host
    env = [f"PGCONNECT_TIMEOUT={target.connect_timeout}"]
    if target.password_source is not None and not passfile:
        raise ValueError("password_source is set: pass the uploaded password file path")
    if passfile:
        env.append(f"PGPASSFILE={passfile}")
    return [
        "env", *env,
        "psql", *PSQL_FLAGS,
        "-h", target.host, "-p", str(target.port), "-U", target.user,
        "-d", _dbname_arg(target.database),
    ]  # fmt: skip


def pgpass_line(user: str, password: str) -> str:
    """The password file content: ``*:*:*:user:password`` with ``\\`` and ``:`` escaped.

    Wildcards for host/port/database: the file is uploaded for one run and one user, and the
    same run connects to several databases."""
    for what, value in (("user", user), ("password", password)):
        if not value or "\n" in value or "\r" in value or "\x00" in value:
            raise ValueError(f"{what} for the password file must be non-empty, one line, no NUL")
    esc = lambda s: s.replace("\\", "\\\\").replace(":", "\\:")  # noqa: E731
    return f"*:*:*:{esc(user)}:{esc(password)}\n"


def shell_command(argv: list[str], stdin_path: str) -> str:
    """A shell command line running ``argv`` with ``stdin_path`` on stdin (all words quoted)."""
    if not argv:
        raise ValueError("empty argv")
    _check_name("stdin_path", stdin_path)
    return " ".join(shlex.quote(a) for a in argv) + " < " + shlex.quote(stdin_path)


def psql_tcp_argv(
    flags: Sequence[str], host: str, port: int, role: str, database: str, sql: str
) -> list[str]:
    """psql logging in over TCP to ``host``:``port`` as ``role`` and running ``sql`` (``-c``): what
    the login and usage probes run, so a role is proven over pg_hba's ``host`` rules."""
    return ["psql", *flags, "-h", host, "-p", str(port), "-U", role, "-d", _dbname_arg(database), "-c", sql]


def with_passfile_on_stdin(argv: list[str], *, stdin: Literal["passfile", "credentials"] = "passfile") -> str:
    """A ``sh -c`` script that runs ``argv`` with a libpq password file read from stdin into a
    private ``mktemp`` file, removed after; its exit code is ``argv``'s. ``stdin`` is the whole
    password file (``passfile``, see :func:`pgpass_line`), or its ``user:password`` part alone
    (``credentials``). The secret never reaches a command line."""
    fill = 'cat > "$f"; ' if stdin == "passfile" else 'IFS= read -r p; printf "*:*:*:%s\\n" "$p" > "$f"; '
    return (
        "umask 077; f=$(mktemp) || exit 1; "
        + fill
        + f'PGPASSFILE="$f" PGCONNECT_TIMEOUT=5 {shlex.join(argv)}; rc=$?; rm -f "$f"; exit $rc'
    )
