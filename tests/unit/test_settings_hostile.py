"""Hostile and odd host data, over every settings block: each value gives one line naming the
host and the key, never a traceback, never a secret-looking value given; and a deploy given one
stops before it plans a single operation (the end of the file: pyinfra --dry on @local)."""

from __future__ import annotations

import os
import typing
from decimal import Decimal
from pathlib import Path

import pytest

from tasks import settings
from tasks.lab.harness import pyinfra_process
from tasks.settings import SettingsError
from tasks.settings.base import MAX_TEXT

REPO = Path(__file__).resolve().parents[2]
HOST = "h"
SECRET = "hunter2-Sup3rS3cret"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOr1nQ3y6w3y7m0aUQ5m8n1pG5D9x0u2lGmK8rX5p1Qw deploy@ops"

# What a block needs to be valid at all; each case changes one thing in it.
BASE = {
    "onboard": {"authorized_keys": [KEY]},
    "backend": {"container": "quant-backend"},
    "postgres": {"container": "quant-postgres"},
}
ROLE = {"name": "quant_user"}
GRANT = {"role": "quant_user", "database": "quant", "privileges": ["CONNECT"]}
DEFAULT_PRIVILEGE = {"owner": "postgres", "role": "quant_user", "database": "quant", "schema": "public",
                     "on": "tables", "privileges": ["SELECT"]}


def role(**changes):
    return {"db_roles": [ROLE, {**ROLE, "name": "other"}, {**ROLE, "name": "third", **changes}]}


def grant(**changes):
    return {"db_grants": [{**GRANT, **changes}]}


def default_privilege(**changes):
    return {"db_default_privileges": [{**DEFAULT_PRIVILEGE, **changes}]}


def service(name, **values):
    base = {"postgres": {"container": "quant-postgres"}, "mlflow": {"container": "quant-mlflow"},
            "redis": {"container": "quant-redis"}, "s3": {"container": "quant-minio"},
            "backend": {"container": "quant-backend"}}[name]
    return {"services": {name: {**base, **values}}}


NUL, CR, LF, ESC, DEL, LS = "\x00", "\r", "\n", "\x1b", "\x7f", "\u2028"

# (block, data, the key the line names, a fragment of what it says). For a whole block of the
# wrong type the data is that value itself.
CASES = [
    # -- a block that is not a mapping
    ("mlflow", ["x"], "mlflow", "expected a mapping, got list"),
    ("onboard", "x", "onboard", "expected a mapping, got str"),
    ("cleanup", 5, "cleanup", "expected a mapping, got int"),
    ("cleanup_schedule", True, "cleanup_schedule", "expected a mapping, got bool"),
    ("stack", 1.5, "stack", "expected a mapping, got float"),
    ("remediate", ("a",), "remediate", "expected a mapping, got tuple"),
    ("backend", b"x", "backend", "expected a mapping, got bytes"),
    ("postgres", [], "postgres", "expected a mapping, got list"),
    ("mlflow", {1: 2}, "mlflow", "setting names must be strings, got int"),
    # -- mlflow
    ("mlflow", {"timeout": 10**12}, "mlflow.timeout", "<= 86400"),
    ("mlflow", {"timeout": "60"}, "mlflow.timeout", "not a whole number, got str"),
    ("mlflow", {"workers": 2.0}, "mlflow.workers", "not a whole number, got float"),
    ("mlflow", {"workers": True}, "mlflow.workers", "not a whole number, got bool"),
    ("mlflow", {"workers": None}, "mlflow.workers", "not a whole number, got None"),
    ("mlflow", {"workers": -1}, "mlflow.workers", ">= 1"),
    ("mlflow", {"max_requests": 10**15}, "mlflow.max_requests", "<="),
    ("mlflow", {"max_requests_jitter": -1}, "mlflow.max_requests_jitter", ">= 0"),
    ("mlflow", {"port": 0}, "mlflow.port", ">= 1"),
    ("mlflow", {"port": 65536}, "mlflow.port", "<= 65535"),
    ("mlflow", {"memory_limit": "1e9"}, "mlflow.memory_limit", "is not a size"),
    ("mlflow", {"memory_limit": 2**80}, "mlflow.memory_limit", "above"),
    ("mlflow", {"memory_limit": float("nan")}, "mlflow.memory_limit", "is not a size"),
    ("mlflow", {"env": {"A": f"x{NUL}y"}}, "mlflow.env.A", "control character (U+0000)"),
    ("mlflow", {"env": {"A": f"x{ESC}[2Jy"}}, "mlflow.env.A", "control character (U+001B)"),
    ("mlflow", {"env": {"DB_PASSWORD": SECRET}}, "mlflow.env.DB_PASSWORD", "use secret_env"),
    ("mlflow", {"env": ["A=1"]}, "mlflow.env", "expected a mapping"),
    ("mlflow", {"ports": ["999.1.1.1:15500:5000"]}, "mlflow.ports", "host_port:container_port"),
    ("mlflow", {"ports": ["127.0.0.1:15500:5000:1"]}, "mlflow.ports", "host_port:container_port"),
    ("mlflow", {"ports": ["[fe80::zz]:1:2"]}, "mlflow.ports", "host_port:container_port"),
    ("mlflow", {"ports": [15500]}, "mlflow.ports", "not a list of strings"),
    ("mlflow", {"labels": {f"a{LF}b": "x"}}, "mlflow.labels['a\\nb']", "the name contains a control character"),
    ("mlflow", {"labels": {"team": f"quant{CR}"}}, "mlflow.labels.team", "control character (U+000D)"),
    ("mlflow", {"extra_args": ["--serve-artifacts", f"--x{LF}y"]}, "mlflow.extra_args[1]", "control character"),
    ("mlflow", {"secret_env": {"X": SECRET}}, "mlflow.secret_env.X", '{"env": "VARIABLE"}'),
    ("mlflow", {"secret_env": {"X": {"env": f"{SECRET}!"}}}, "mlflow.secret_env.X", "env '***' is not"),
    ("mlflow", {"labels": {"api_key": SECRET * 300}}, "mlflow.labels.api_key", "longer than"),
    ("mlflow", {"secret_env": {"X": {"env": f"A{LF}B"}}}, "mlflow.secret_env.X.env", "control character"),
    ("mlflow", {"secret_env": {"X": {"file": f"/run/s{CR}"}}}, "mlflow.secret_env.X.file", "control character"),
    ("mlflow", {"backend_store_uri": f"postgresql://mlflow:{SECRET}@db/mlflow"}, "mlflow.backend_store_uri",
     "contains a password"),
    ("mlflow", {"host": "0.0.0.0 --workers 9"}, "mlflow.host", "not an IP address or a host name"),
    ("mlflow", {"restart_policy": "on-failure:1\n"}, "mlflow.restart_policy", "control character"),
    ("mlflow", {"server": ["auto"]}, "mlflow.server", "must be one of auto, gunicorn, uvicorn"),
    ("mlflow", {"worker_class": "x" * (MAX_TEXT + 1)}, "mlflow.worker_class", "longer than"),
    # -- postgres
    ("postgres", {"port": "5432"}, "postgres.port", "not a whole number, got str"),
    ("postgres", {"port": 99999}, "postgres.port", "<= 65535"),
    ("postgres", {"connect_timeout": 10**9}, "postgres.connect_timeout", "<="),
    ("postgres", {"connect_timeout": 0}, "postgres.connect_timeout", ">= 1"),
    ("postgres", {"superuser_password": SECRET}, "postgres.superuser_password", "plaintext password"),
    ("postgres", {"superuser_password": {"env": SECRET}}, "postgres.superuser_password", "not a variable name"),
    ("postgres", {"database": f"quant{LF}\\! rm"}, "postgres.database", "control character"),
    ("postgres", {"superuser": f"postgres{NUL}"}, "postgres.superuser", "control character"),
    ("postgres", {"access": "ssh"}, "postgres.access", "must be one of docker, psql"),
    ("postgres", {"os_user": ["postgres"]}, "postgres.os_user", "not a string, got list"),
    ("postgres", {"container": None, "host": None}, "postgres.host", "psql access needs"),
    # -- db_* (gathered top-level keys)
    ("db", {"db_roles": "quant_user"}, "db_roles", "expected a list, got str"),
    ("db", {"db_roles": {"name": "x"}}, "db_roles", "expected a list, got dict"),
    ("db", {"db_roles": ["quant_user"]}, "db_roles[0]", "expected a mapping, got str"),
    ("db", role(name=5), "db_roles[2].name", "not a string, got int"),
    ("db", role(name=f"evil{LF}role"), "db_roles[2].name", "control character"),
    ("db", role(login="no"), "db_roles[2].login", "true/false, got str"),
    ("db", role(login=0), "db_roles[2].login", "true/false, got int"),
    ("db", role(superuser=1), "db_roles[2].superuser", "true/false, got int"),
    ("db", role(present="false"), "db_roles[2].present", "true/false, got str"),
    ("db", role(connection_limit=10**12), "db_roles[2].connection_limit", "<="),
    ("db", role(connection_limit=-2), "db_roles[2].connection_limit", ">= -1"),
    ("db", role(connection_limit="20"), "db_roles[2].connection_limit", "not a whole number, got str"),
    ("db", role(password=SECRET), "db_roles[2].password", "plaintext password"),
    ("db", role(password={"env": "NO_SUCH_VARIABLE_HERE_X"}), "db_roles[2].password", "is not set"),
    ("db", role(member_of="readers"), "db_roles[2].member_of", "expected a list, got str"),
    ("db", role(member_of=[f"r{ESC}"]), "db_roles[2].member_of[0]", "control character"),
    ("db", role(valid_until=f"infinity{LF}"), "db_roles[2].valid_until", "control character"),
    ("db", role(passwrod={"env": "X"}), "db_roles[2].passwrod", "did you mean 'password'"),
    ("db", {"db_databases": [{"name": f"q{NUL}"}]}, "db_databases[0].name", "control character"),
    ("db", {"db_databases": [{"name": "q", "owner": 7}]}, "db_databases[0].owner", "not a string, got int"),
    ("db", grant(privileges="CONNECT"), "db_grants[0].privileges", "expected a list, got str"),
    ("db", grant(privileges=[f"SELECT{LF}"]), "db_grants[0].privileges[0]", "control character"),
    ("db", grant(on="views"), "db_grants[0].on", "must be one of"),
    ("db", grant(role=None), "db_grants[0].role", "not a string, got None"),
    ("db", grant(schema=f"public{CR}"), "db_grants[0].schema", "control character"),
    ("db", default_privilege(on=["tables"]), "db_default_privileges[0].on", "not a string, got list"),
    ("db", default_privilege(owner=f"o{DEL}"), "db_default_privileges[0].owner", "control character"),
    ("db", default_privilege(privileges=None), "db_default_privileges[0].privileges", "expected a list"),
    ("db", {"db_exclusive": "yes"}, "db_exclusive", "true/false, got str"),
    ("db", {"db_exclusive": 1}, "db_exclusive", "true/false, got int"),
    ("db", {"db_verify": "no"}, "db_verify", "true/false, got str"),
    ("db", {"db_role": [ROLE]}, "db_role", "did you mean 'db_roles'"),
    # -- cleanup
    ("cleanup", {"database": f"quant{LF}"}, "cleanup.database", "control character (U+000A)"),
    ("cleanup", {"table": f"users{NUL}"}, "cleanup.table", "control character (U+0000)"),
    ("cleanup", {"column": f"name{LS}"}, "cleanup.column", "control character (U+2028)"),
    ("cleanup", {"max_rows": 10**12}, "cleanup.max_rows", "<="),
    ("cleanup", {"max_rows": 0}, "cleanup.max_rows", ">= 1"),
    ("cleanup", {"max_rows": "1000"}, "cleanup.max_rows", "not a whole number, got str"),
    ("cleanup", {"allow_over_max": "no"}, "cleanup.allow_over_max", "true/false, got str"),
    ("cleanup", {"vacuum": 0}, "cleanup.vacuum", "true/false, got int"),
    ("cleanup", {"sample_size": 10**6}, "cleanup.sample_size", "<= 1000"),
    ("cleanup", {"lock_timeout": "1.5h"}, "cleanup.lock_timeout", "is not a duration"),
    ("cleanup", {"lock_timeout": float("inf")}, "cleanup.lock_timeout", "between 0 and a year"),
    ("cleanup", {"statement_timeout": 0}, "cleanup.statement_timeout", "at least 1ms"),
    ("cleanup", {"min_age": -5}, "cleanup.min_age", "between 0 and a year"),
    ("cleanup", {"lock_wait": 10**9}, "cleanup.lock_wait", "between 0 and a year"),
    ("cleanup", {"patterns": "test\\_%"}, "cleanup.patterns", "non-empty list"),
    ("cleanup", {"patterns": [f"test\\_%{LF}"]}, "cleanup.patterns[0]", "control character"),
    ("cleanup", {"foreign_keys": "cascade"}, "cleanup.foreign_keys", "must be one of refuse, delete_dependents"),
    ("cleanup", {"vacuum_tables": [f"t{CR}"]}, "cleanup.vacuum_tables[0]", "control character"),
    ("cleanup", {"report_path": f"/tmp/r{NUL}.json"}, "cleanup.report_path", "control character"),
    ("cleanup", {"largest_tables": 0}, "cleanup.largest_tables", ">= 1"),
    # -- cleanup_schedule
    ("cleanup_schedule", {"minute": 61}, "cleanup_schedule.minute", "61 is out of range 0-59"),
    ("cleanup_schedule", {"minute": "*/0"}, "cleanup_schedule.minute", "step /0"),
    ("cleanup_schedule", {"minute": "-1"}, "cleanup_schedule.minute", "not a cron item"),
    ("cleanup_schedule", {"hour": 24}, "cleanup_schedule.hour", "24 is out of range 0-23"),
    ("cleanup_schedule", {"hour": "5-3"}, "cleanup_schedule.hour", "runs backwards"),
    ("cleanup_schedule", {"day_of_month": 0}, "cleanup_schedule.day_of_month", "out of range 1-31"),
    ("cleanup_schedule", {"month": "13"}, "cleanup_schedule.month", "out of range 1-12"),
    ("cleanup_schedule", {"day_of_week": "8"}, "cleanup_schedule.day_of_week", "out of range 0-7"),
    ("cleanup_schedule", {"day_of_week": True}, "cleanup_schedule.day_of_week", "got bool"),
    ("cleanup_schedule", {"minute": "1,,2"}, "cleanup_schedule.minute", "not a cron item"),
    ("cleanup_schedule", {"minute": "17 * * * * root"}, "cleanup_schedule.minute", "not a cron item"),
    ("cleanup_schedule", {"on_calendar": "daily\rExecStartPre=/bin/sh"}, "cleanup_schedule.on_calendar",
     "control character"),
    ("cleanup_schedule", {"on_calendar": "*-*-* 25:00"}, "cleanup_schedule.on_calendar", "hour 25"),
    ("cleanup_schedule", {"on_calendar": "sometimes"}, "cleanup_schedule.on_calendar", "not a systemd calendar"),
    ("cleanup_schedule", {"on_calendar": "*-13-* 03:00"}, "cleanup_schedule.on_calendar", "month 13"),
    ("cleanup_schedule", {"present": "no"}, "cleanup_schedule.present", "true/false, got str"),
    ("cleanup_schedule", {"install_cron": 1}, "cleanup_schedule.install_cron", "true/false, got int"),
    ("cleanup_schedule", {"log_keep": 10**9}, "cleanup_schedule.log_keep", "<= 1000"),
    ("cleanup_schedule", {"log_max_bytes": "1t"}, "cleanup_schedule.log_max_bytes", "<="),
    ("cleanup_schedule", {"project_dir": f"/srv/q{CR}ExecStartPre=/bin/sh"}, "cleanup_schedule.project_dir",
     "control character"),
    ("cleanup_schedule", {"inventory": f"inv{LF}.py"}, "cleanup_schedule.inventory", "control character"),
    ("cleanup_schedule", {"env": {"API_TOKEN": SECRET}}, "cleanup_schedule.env.API_TOKEN", "looks like a secret"),
    ("cleanup_schedule", {"env": {"X": f"a{NUL}"}}, "cleanup_schedule.env.X", "control character (U+0000)"),
    ("cleanup_schedule", {"name": "../etc/cron"}, "cleanup_schedule.name", "not valid"),
    # -- stack
    ("stack", {"deadline": 10**12}, "stack.deadline", "between 0 and a year"),
    ("stack", {"retry_attempts": 0}, "stack.retry_attempts", ">= 1"),
    ("stack", {"retry_attempts": "5"}, "stack.retry_attempts", "not a whole number, got str"),
    ("stack", {"command_timeout": 1.5}, "stack.command_timeout", "whole seconds"),
    ("stack", {"memory_warn_percent": "50"}, "stack.memory_warn_percent", "not a number"),
    ("stack", {"memory_fail_percent": float("nan")}, "stack.memory_fail_percent", "finite"),
    ("stack", {"memory_warn_percent": 150}, "stack.memory_warn_percent", "<= 100"),
    ("stack", {"memory_warn_percent": 99, "memory_fail_percent": 90}, "stack.memory_fail_percent", "above"),
    ("stack", {"logs_since": "yesterday"}, "stack.logs_since", "neither a duration"),
    ("stack", {"log_signatures": {"x": "("}}, "stack.log_signatures.x", "bad pattern"),
    ("stack", {"log_signatures": {"x": ".*"}}, "stack.log_signatures.x", "matches every line"),
    ("stack", {"services": "all"}, "stack.services", "expected a mapping, got str"),
    ("stack", {"services": {"mlflow": ["x"]}}, "stack.services.mlflow", "expected a mapping, got list"),
    ("stack", {"services": {"kafka": {}}}, "stack.services.kafka", "unknown setting"),
    ("stack", service("mlflow", workers=10**6), "stack.services.mlflow.workers", "<="),
    ("stack", service("mlflow", artifacts="no"), "stack.services.mlflow.artifacts", "true/false, got str"),
    ("stack", service("mlflow", url="http://a b"), "stack.services.mlflow.url", "not valid"),
    ("stack", service("mlflow", url=f"http://u:{SECRET}@mlflow x"), "stack.services.mlflow.url", "u:***@"),
    ("stack", {"log_signatures": {"db_password": f"{SECRET}("}}, "stack.log_signatures.db_password",
     "bad pattern '***'"),
    ("stack", {"log_signatures": {"x": f"{SECRET}{LF}"}}, "stack.log_signatures.x", "control character"),
    ("stack", service("postgres", connections_margin=10**9), "stack.services.postgres.connections_margin", "<="),
    ("stack", service("postgres", container_port=0), "stack.services.postgres.container_port", ">= 1"),
    ("stack", service("postgres", roles=[{"name": "x", "password": SECRET}]),
     "stack.services.postgres.roles[0].password", '{"env": "VARIABLE"}'),
    ("stack", service("redis", password=SECRET), "stack.services.redis.password", '{"env": "VARIABLE"}'),
    ("stack", service("redis", container=f"r{LF}"), "stack.services.redis.container", "control character"),
    ("stack", service("s3", bucket=f"b{NUL}"), "stack.services.s3.bucket", "control character"),
    ("stack", service("backend", health_path="/h\tx"), "stack.services.backend.health_path", "control character"),
    # -- watcher
    ("watcher", {"present": "no"}, "watcher.present", "true/false, got str"),
    ("watcher", {"install_dir": "opt/q"}, "watcher.install_dir", "absolute path"),
    ("watcher", {"config_dir": f"/etc/q{LF}ExecStartPre=/bin/sh"}, "watcher.config_dir", "control character"),
    ("watcher", {"name": "../etc/x"}, "watcher.name", "not valid"),
    ("watcher", {"supervisor": "runit"}, "watcher.supervisor", "auto"),
    ("watcher", {"restart_sec": 0}, "watcher.restart_sec", ">= 1"),
    ("watcher", {"exclude": ["a b"]}, "watcher.exclude[0]", "not valid"),
    # -- remediate
    ("remediate", {"verify": "no"}, "remediate.verify", "true/false, got str"),
    ("remediate", {"verify": 0}, "remediate.verify", "true/false, got int"),
    ("remediate", {"tail": 10**9}, "remediate.tail", "<= 100000"),
    ("remediate", {"tail": 5.0}, "remediate.tail", "not a whole number, got float"),
    ("remediate", {"since": "-1h"}, "remediate.since", "neither a duration"),
    ("remediate", {"record_path": "relative.json"}, "remediate.record_path", "absolute path"),
    ("remediate", {"record_path": f"/var/lib/q{LF}.json"}, "remediate.record_path", "control character"),
    ("remediate", {"containers": {"mlflow": "bad name"}}, "remediate.containers.mlflow", "not"),
    ("remediate", {"containers": {"Bad Role": "x1"}}, "remediate.containers['Bad Role'] (the name)", "not valid"),
    ("remediate", {"containers": ["mlflow"]}, "remediate.containers", "expected a mapping, got list"),
    ("remediate", {"report_dir": f"r{ESC}"}, "remediate.report_dir", "control character"),
    # -- backend
    ("backend", {"port": "8000"}, "backend.port", "not a whole number, got str"),
    ("backend", {"port": 70000}, "backend.port", "<= 65535"),
    ("backend", {"force_polling": "yes"}, "backend.force_polling", "true/false, got str"),
    ("backend", {"reload_delay": 0}, "backend.reload_delay", "> 0"),
    ("backend", {"reload_delay": 3600}, "backend.reload_delay", "<= 60"),
    ("backend", {"dockerfile": "Dockerfile"}, "backend.dockerfile", "absolute path"),
    ("backend", {"dockerfile": f"/srv/Dockerfile{LF}"}, "backend.dockerfile", "control character"),
    ("backend", {"container": None}, "backend.container", "not a string, got None"),
    ("backend", {"health_path": "health"}, "backend.health_path", "not valid"),
    # -- onboard
    ("onboard", {"authorized_keys": []}, "onboard.authorized_keys", "at least one public key"),
    ("onboard", {"authorized_keys": KEY}, "onboard.authorized_keys", "at least one public key"),
    ("onboard", {"authorized_keys": [f"{KEY}\nssh-rsa AAAA evil"]}, "onboard.authorized_keys[0]", "control character"),
    ("onboard", {"exclusive_keys": "yes"}, "onboard.exclusive_keys", "true/false, got str"),
    ("onboard", {"verify": 1}, "onboard.verify", "true/false, got int"),
    ("onboard", {"log_max_file": 10**6}, "onboard.log_max_file", "<= 100"),
    ("onboard", {"log_max_size": "1t"}, "onboard.log_max_size", "<="),
    ("onboard", {"docker_gid": True}, "onboard.docker_gid", "group id"),
    ("onboard", {"docker_gid": 10**9}, "onboard.docker_gid", "group id"),
    ("onboard", {"user": "root"}, "onboard.user", "not a valid non-root"),
    ("onboard", {"user": f"deploy{LF}"}, "onboard.user", "control character"),
    ("onboard", {"shell": f"/bin/bash{CR}"}, "onboard.shell", "control character"),
    ("onboard", {"sudo_commands": "ALL"}, "onboard.sudo_commands", "expected a list of strings"),
    ("onboard", {"sudo_commands": ["ALL"]}, "onboard.sudo_commands[0]", "absolute path"),
    ("onboard", {"sudo_commands": [f"/usr/bin/systemctl status docker{LF}deploy ALL=(ALL) ALL"]},
     "onboard.sudo_commands[0]", "control character"),
    ("onboard", {"packages": ["docker.io", "x;rm"]}, "onboard.packages", "Debian package names"),
    ("onboard", {"engine": "podman"}, "onboard.engine", "must be one of local, socket"),
    ("onboard", {"compose": {"services": {"db": {"environment": {"POSTGRES_PASSWORD": SECRET}}}}},
     "onboard.compose.services.db.environment.POSTGRES_PASSWORD", "looks like a secret"),
    ("onboard", {"compose": {"services": {"db": {"image": f"postgres{NUL}"}}}},
     "onboard.compose.services.db.image", "control character"),
]


def _load(block, data):
    if block in settings.BLOCKS and isinstance(data, dict) and block in BASE:
        data = {**BASE[block], **data}
    return settings.load(block, HOST, data)


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def test_the_table_is_big_and_covers_every_block():
    assert len(CASES) >= 100
    assert {case[0] for case in CASES} == set(settings.BLOCKS)
    gathered = {key for block, data, *_ in CASES if block == "db" for key in data}
    assert {"db_roles", "db_databases", "db_grants", "db_default_privileges", "db_exclusive",
            "db_verify"} <= gathered


@pytest.mark.parametrize("block, data, key, fragment", CASES,
                         ids=[f"{i}-{c[2]}" for i, c in enumerate(CASES)])
def test_hostile_value_gives_one_line_naming_host_and_key(block, data, key, fragment, monkeypatch):
    monkeypatch.delenv("NO_SUCH_VARIABLE_HERE_X", raising=False)
    with pytest.raises(SettingsError) as err:  # not any other exception: no traceback
        _load(block, data)
    text = str(err.value)
    lines = text.split("\n")
    assert len(lines) == len(err.value.problems), text  # one line per problem
    assert all(line.startswith(f"host '{HOST}': ") for line in lines), text
    ours = [line for line in lines if line.startswith(f"host '{HOST}': {key}:")]
    assert ours, f"no line names {key!r}: {text}"
    assert any(fragment in line for line in ours), text
    for noise in ("Traceback", 'File "', "validation error", "errors.pydantic.dev", "input_value",
                  "[type="):
        assert noise not in text
    assert not any(c in text for c in (NUL, CR, ESC, DEL, LS))
    assert SECRET not in text
    for value in _strings(data):
        if value.startswith("hunter2"):
            assert value not in text


def test_several_problems_each_keep_their_line():
    with pytest.raises(SettingsError) as err:
        settings.load("db", HOST, {**role(login="no", connection_limit="9"), "db_exclusive": "yes",
                                   **grant(privileges=["SELECT", 5])})
    lines = str(err.value).split("\n")
    assert sorted(line.split(": ")[1] for line in lines) == [
        "db_exclusive", "db_grants[0].privileges[1]", "db_roles[2].connection_limit", "db_roles[2].login"]


def test_control_characters_are_reported_before_anything_reads_the_value():
    # Nothing else sees a value holding one (no check echoes it, no file is read by its name).
    with pytest.raises(SettingsError) as err:
        settings.load("onboard", HOST, {"authorized_keys": [{"file": f"/nonexistent{LF}x"}],
                                        "user": f"a{ESC}", "verify": "no"})
    assert err.value.problems == [
        "onboard.authorized_keys[0].file: contains a control character (U+000A)",
        "onboard.user: contains a control character (U+001B)",
    ]


def test_group_defaults_of_the_wrong_type_are_named_too():
    with pytest.raises(SettingsError, match=r"^host 'h': mlflow_defaults: expected a mapping, got list$"):
        settings.load("mlflow", HOST, {}, ["workers", 3])


@pytest.mark.parametrize("value", [True, False])
def test_strict_booleans_still_take_real_booleans(value):
    assert settings.load("remediate", HOST, {"verify": value}).verify is value
    assert settings.load("db", HOST, {"db_exclusive": value}).exclusive is value


def test_lists_still_read_as_tuples_and_ints_as_floats():
    s = settings.load("stack", HOST, {"memory_warn_percent": 80, "services": {
        "postgres": {"container": "pg", "roles": [{"name": "r", "password": {"env": "X"}}]}}})
    assert s.memory_warn_percent == 80.0 and isinstance(s.services.postgres.roles, tuple)
    c = settings.load("cleanup", HOST, {"patterns": ["test\\_%"], "vacuum_tables": ["users"]})
    assert c.patterns == ("test\\_%",) and c.vacuum_tables == ("users",)


def test_a_compose_document_may_hold_multi_line_strings_but_no_other_control():
    compose = {"services": {"db": {"image": "postgres:15", "command": "a\nb\tc"}}}
    s = settings.load("onboard", HOST, {**BASE["onboard"], "compose": compose})
    assert s.compose == compose
    with pytest.raises(SettingsError, match=r"onboard.compose.services.db.command: contains a control"):
        settings.load("onboard", HOST, {**BASE["onboard"], "compose": {
            "services": {"db": {"image": "postgres:15", "command": "a\rb"}}}})


def test_a_self_referencing_value_is_a_line_not_a_recursion_error():
    loop: dict = {"services": {"db": {"image": "postgres:15"}}}
    loop["services"]["db"]["x"] = loop
    with pytest.raises(SettingsError, match="nested more than"):
        settings.load("onboard", HOST, {**BASE["onboard"], "compose": loop})


# Values of every odd type and shape, for every field of every block (and of each db_* entry and
# stack service): whatever a field expects, none of these may end in anything but SettingsError
# lines or a valid block. This is what catches the case nobody listed.
ODD_VALUES = [
    object(), b"x", {1, 2}, frozenset(), float("nan"), float("inf"), 10**30, -10**30, 2**63, -1, 0, 1.5,
    True, False, None, "", " ", NUL, f"a{LF}b", LS, "x" * 100_000, [], [None], [[[]]], {}, {"": ""},
    {None: 1}, {"a": object()}, Decimal("1"), 1j, ("t",), "-rf", "$(id)", "'; DROP TABLE x; --", "%",
    "../../etc/passwd", "ALL", "*", "0x10", "1e3", "\u0661\u0662", "\uff4d\uff4c", "\ud800",
]


def _field_cases():
    from tasks.settings import postgres, stack
    for block, model in settings.BLOCKS.items():
        for name, field in model.model_fields.items():
            for value in ODD_VALUES:
                yield block, {**BASE.get(block, {}), (field.alias or name): value}
    entries = (("db_roles", postgres.RoleSettings, ROLE), ("db_grants", postgres.GrantSettings, GRANT),
               ("db_default_privileges", postgres.DefaultPrivilegeSettings, DEFAULT_PRIVILEGE),
               ("db_databases", postgres.DatabaseSettings, {"name": "quant"}))
    for key, model, base in entries:
        for name, field in model.model_fields.items():
            for value in ODD_VALUES:
                yield "db", {key: [{**base, (field.alias or name): value}]}
    for name in stack.SERVICES:
        model = typing.get_args(stack.Services.model_fields[name].annotation)[0]
        for field in model.model_fields:
            for value in ODD_VALUES:
                yield "stack", service(name, **{field: value})


def test_every_field_of_every_block_takes_any_value_without_a_traceback(monkeypatch):
    monkeypatch.setenv("HOME", "/nonexistent")
    bad = []
    count = 0
    for block, data in _field_cases():
        count += 1
        try:
            settings.load(block, HOST, data)
        except SettingsError as err:
            text = str(err)
            lines = text.split("\n")
            prefix = ("db_",) if block == "db" else (f"{block}.", f"{block}:")
            if (len(lines) != len(err.problems)
                    or not all(line.startswith(f"host '{HOST}': ") for line in lines)
                    or not all(p.startswith(prefix) for p in err.problems)
                    or any(c in text for c in (NUL, CR, LS, "\ud800"))
                    or "could not be read" in text  # the safety net: a validator tripped
                    or "Traceback" in text or "validation error" in text):
                bad.append(f"{block} {data!r:.120}: {text!r:.300}")
        except Exception as exc:  # noqa: BLE001 - any other exception is the failure looked for
            bad.append(f"{block} {data!r:.120}: {type(exc).__name__}: {exc!s:.200}")
    assert count > 5000
    assert bad == []


def _every_number(schema, defs, path, seen=None):
    """(path, schema) for every integer/number in a JSON schema, refs followed."""
    seen = seen or set()
    if "$ref" in schema:
        name = schema["$ref"].split("/")[-1]
        if name in seen:
            return
        yield from _every_number(defs[name], defs, path, seen | {name})
        return
    for key in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(key, []):
            yield from _every_number(sub, defs, path, seen)
    types = schema.get("type")
    types = types if isinstance(types, list) else [types]
    if {"integer", "number"} & set(types):
        yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _every_number(sub, defs, f"{path}.{name}", seen)
    if isinstance(schema.get("items"), dict):
        yield from _every_number(schema["items"], defs, f"{path}[]", seen)
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _every_number(schema["additionalProperties"], defs, f"{path}.*", seen)


def test_every_number_in_every_block_has_both_bounds():
    # A count, a timeout, a port, a size or a percentage without an upper bound is how 10**12
    # got through to PostgreSQL. The schema is generated from the models, so this reads them.
    from pydantic import TypeAdapter
    unbounded = []
    for block, model in settings.BLOCKS.items():
        schema = TypeAdapter(model).json_schema()
        for path, number in _every_number(schema, schema.get("$defs", {}), block):
            if not ({"minimum", "exclusiveMinimum"} & set(number)
                    and {"maximum", "exclusiveMaximum"} & set(number)):
                unbounded.append(path)
    assert unbounded == []


def test_every_block_is_strict():
    for model in settings.BLOCKS.values():
        assert model.model_config.get("strict") is True, model.__name__


# -- nothing on the host changes: the deploys read their settings before planning anything.

def _inventory(tmp_path, data):
    path = tmp_path / "inventory.py"
    path.write_text(f"hosts = [('@local', {data!r})]\n")
    return path


DEPLOYS = [
    ("fix_mlflow", {"mlflow": {"workers": "4"}}, "mlflow.workers: is not a whole number, got str"),
    ("db_users", {"postgres": {"container": "hostile-nope-pg"}, "db_roles": [{"name": "r", "login": "no"}]},
     "db_roles[0].login: is not true/false, got str"),
    ("cleanup_database", {"postgres": {"container": "hostile-nope-pg"}, "cleanup": {"database": "q\nx"}},
     "cleanup.database: contains a control character (U+000A)"),
    ("schedule_cleanup", {"cleanup_schedule": {"minute": 61}}, "cleanup_schedule.minute: 61 is out of range"),
    ("remediate", {"remediate": {"verify": "no"}}, "remediate.verify: is not true/false, got str"),
    ("verify_stack", {"stack": {"retry_attempts": 10**9}}, "stack.retry_attempts: must be <= 1000"),
    ("fix_backend_reload", {"backend": {"container": "hostile-nope-backend", "port": "8000"}},
     "backend.port: is not a whole number, got str"),
    ("onboard_host", {"onboard": "deploy"}, "onboard: expected a mapping, got str"),
    ("install_watcher", {"watcher": {"restart_sec": 0}}, "watcher.restart_sec: must be >= 1"),
    ("collect_watch_audit", {"watcher": {"present": "no"}}, "watcher.present: is not true/false, got str"),
]


@pytest.mark.parametrize("deploy, data, line", DEPLOYS, ids=[d[0] for d in DEPLOYS])
def test_a_deploy_given_a_bad_value_stops_before_any_operation(deploy, data, line, tmp_path):
    inventory = _inventory(tmp_path, data)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUANT", "PYINFRA"))}
    result = pyinfra_process("--dry", str(inventory), f"deploys/{deploy}.py", env=env, inherit_env=False, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert f"host '@local': {line}" in out, out
    ours = [text for text in out.splitlines() if "host '@local':" in text]
    assert len(ours) == 1, out  # the one problem, once, on its line
    assert "Traceback" not in out, out
    for planned in ("Ready:", "Proposed changes", "Starting operation", "Beginning operation run",
                    "[@local] Success", "[@local] No changes"):
        assert planned not in out, out
