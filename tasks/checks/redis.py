"""Redis checks: PING, and a scratch key written, read back and deleted (with the password, if
the service has one, on stdin as REDISCLI_AUTH)."""

from __future__ import annotations

import secrets as _secrets
import shlex

from tasks.checks import containers
from tasks.checks.runner import NotYet, Session
from tasks.settings.stack import RedisService


def check_redis(session: Session, conf: RedisService, memory: tuple[float, float] = (85, 95)) -> None:
    name = conf.container
    if not containers.container_checks(session, name, *memory):
        return containers.skip_service(session, "redis", name)
    source = conf.password

    def cli(*args: str) -> tuple[bool, str]:
        call = shlex.join(["redis-cli", "--raw", *args])
        if source:
            inner = f"IFS= read -r REDISCLI_AUTH; export REDISCLI_AUTH; {call}"
            return session.shell.run_with_secret(
                shlex.join(["docker", "exec", "-i", name, "sh", "-c", inner]),
                source.read(session.environ),
                session.command_timeout,
            )
        return session.sh(shlex.join(["docker", "exec", name, "redis-cli", "--raw", *args]))

    def ping():
        ok, out = cli("PING")
        if not ok or out.strip() != "PONG":
            raise NotYet(f"PING -> {' '.join(out.split())[-160:] or 'no answer (timed out)'}")
        return "PING -> PONG"

    def write_read():
        key, value = f"quantlab:verify:{_secrets.token_hex(6)}", _secrets.token_hex(8)
        ok, out = cli("SET", key, value, "EX", "60")
        if not ok or out.strip() != "OK":
            raise NotYet(f"SET {key} -> {' '.join(out.split())[-160:] or 'no answer'}")
        ok, out = cli("GET", key)
        cli("DEL", key)
        if not ok or out.strip() != value:
            raise NotYet(f"GET {key} returned {' '.join(out.split())[-80:]!r}, not what was written")
        return f"SET (EX 60) + GET {key} round trip, key deleted"

    session.check(f"Redis {name} answers PING", name, ping)
    session.check(f"Redis {name} writes and reads a scratch key", name, write_read)
