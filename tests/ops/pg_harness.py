"""PostgreSQL operation tests without a server: the catalog fact's recorded output in, the
commands (or the noop) out.

A case (``tests/ops/postgres.<operation>/*.json``) names the operation's arguments and what the
server printed for the ``PostgresCatalog`` query: a recorded PostgreSQL 15 catalog
(tests/unit/data/pg15_catalog_quant_db.json) edited by name (``"catalog": {"roles": {"x": {...}
| null}}``) and the password digests the query returns (``"passwords": {"role": digest}``). The
fake host runs the real fact: its ``command()`` (the arguments the operation asked with are
checked against ``"fact"``) and its ``process()`` on that output, so the password decision is
made exactly as on a real run, from a digest, never a verifier.

Randomness is pinned: the private directory's name and the SCRAM salt (the upload then shows
the exact SQL the server would get).
"""
from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyinfra.api import FileUploadCommand, FunctionCommand, StringCommand
from pyinfra.context import ctx_host, ctx_state

# Not pyinfra_testing.operations: it imports pyinfra_cli, which gevent-monkey-patches the process.
from pyinfra_testing.util import FakeHost, FakeState, get_command_string

from tasks.core import pg_roles
from tasks.core.pg_exec import PgTarget
from tasks.core.pg_grants import DefaultPrivilegeSpec, GrantSpec
from tasks.core.scram import scram_verifier
from tasks.facts import postgres as pg_facts
from tasks.operations import postgres as pg_ops
from tasks.settings.types import SecretSource

OPS = Path(__file__).parent
RECORDED_CATALOG = OPS.parent / "unit" / "data" / "pg15_catalog_quant_db.json"
WORKDIR = "/tmp/quant-pg-0000000000000000"
SALT = b"ops-pinned-salt!"
PASSWORD_ENV = "QUANT_OPS_PASSWORD"
PASSWORD = "ops-test-password"
# Keys of the catalog's lists, for editing them by name.
_KEYS = {"roles": "name", "databases": "name", "schemas": "name", "relations": "ref",
         "functions": "ref", "default_acls": None}
_NEW_ROLE = {"login": False, "superuser": False, "createdb": False, "createrole": False,
             "inherit": True, "replication": False, "bypassrls": False, "connection_limit": -1,
             "valid_until": None, "password_known": False, "password": None, "member_of": []}


def cases(folder: str) -> list[Any]:
    paths = sorted((OPS / folder).glob("*.json"))
    assert paths, f"no cases in tests/ops/{folder}"
    return [pytest.param(json.loads(path.read_text()), id=path.stem) for path in paths]


def catalog_output(case: dict) -> list[str]:
    """What the catalog query prints for this case: one JSON line, or the case's raw lines."""
    if "raw_output" in case:
        return case["raw_output"]
    catalog = json.loads(RECORDED_CATALOG.read_text())
    for section, edits in case.get("catalog", {}).items():
        if section not in _KEYS or _KEYS[section] is None:
            catalog[section] = edits  # replaced whole
            continue
        key = _KEYS[section]
        items = {item[key]: item for item in catalog[section]}
        for name, change in edits.items():
            if change is None:
                items.pop(name, None)
            elif name in items:
                items[name] = {**items[name], **change}
            else:
                items[name] = {**(_NEW_ROLE if section == "roles" else {}), key: name, **change}
        catalog[section] = list(items.values())
    return [json.dumps({"catalog": catalog, "passwords": case.get("passwords", {})})]


class CatalogHost(FakeHost):
    """pyinfra_testing's FakeHost whose get_fact runs the real fact on recorded output."""

    def __init__(self, case: dict):
        super().__init__(FakeState(), "ops-host", facts={}, data={})
        self.case = case
        self.asked: list[dict] = []  # the fact arguments the operation asked with
        self.fact_commands: list[str] = []  # the fact's command lines, as pyinfra would run them
        self.logs: list[str] = []
        self.run: list[str] = []  # fact-time commands (psql mode: the private directory)
        self.uploads: dict[str, str] = {}

    def get_fact(self, fact_cls, **kwargs):
        assert fact_cls is pg_facts.PostgresCatalog, f"unexpected fact {fact_cls.__name__}"
        fact = fact_cls()
        command = fact.command(**kwargs)
        assert isinstance(command, StringCommand)
        self.fact_commands.append(command.get_raw_value())
        self.asked.append({
            "database": kwargs["database"],
            "passwords": sorted(kwargs.get("passwords") or {}),
            "schemas": list(kwargs["schemas"]) if kwargs.get("schemas") is not None else None,
        })
        return fact.process(catalog_output(self.case))

    def log(self, message, *_, **__):
        self.logs.append(message)

    def run_shell_command(self, command, **_):
        self.run.append(command.get_raw_value())
        return True, None

    def put_file(self, src, dest, **_):
        self.uploads[dest] = src.read()
        return True


@dataclass
class Planned:
    commands: list
    noop: str | None
    plan: list[str]  # the "plan: ..." lines the operation logged, one a change
    host: CatalogHost

    def rendered(self) -> list:
        """Commands as pyinfra_testing renders them; a verification callback as
        ``["verify", [[check, where], ...]]`` (its probes run against a live server only)."""
        out: list = []
        for command in self.commands:
            if isinstance(command, FunctionCommand):
                (checks,) = command.args
                out.append(["verify", [[name, where] for name, where, _ in checks]])
            elif isinstance(command, FileUploadCommand):
                command.src.seek(0)
                out.append(["upload", command.src.read(), str(command.dest)])
            else:
                out.append(get_command_string(command))
        return out


@contextmanager
def pinned(monkeypatch) -> Iterator[None]:
    monkeypatch.setattr(pg_ops, "private_dir", lambda: WORKDIR)
    monkeypatch.setattr(pg_facts, "private_dir", lambda: WORKDIR)
    monkeypatch.setattr(pg_roles, "scram_verifier",
                        lambda password, **kw: scram_verifier(password, **{"salt": SALT, **kw}))
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    yield


def target(data: dict | None) -> PgTarget:
    data = dict(data or {"mode": "docker", "container": "qtops-postgres"})
    if data.get("password_source"):
        data["password_source"] = SecretSource.model_validate(data["password_source"])
    return PgTarget(**data)


def grant_spec(item: dict) -> GrantSpec | DefaultPrivilegeSpec:
    """A GrantSpec (or, with ``owner``, a DefaultPrivilegeSpec) from its JSON form."""
    item = copy.deepcopy(item)
    item["privileges"] = frozenset(item["privileges"])
    if "owner" in item:
        return DefaultPrivilegeSpec(**item)
    return GrantSpec(**item)


def plan(op, case: dict, **kwargs) -> Planned:
    """Run the operation's planning (its generator) against the case's recorded catalog."""
    host = CatalogHost(case=case)
    with ctx_state.use(host.state), ctx_host.use(host):
        commands = list(op._inner(**kwargs))
    lines = [m.removeprefix("plan: ") for m in host.logs if m.startswith("plan: ")]
    return Planned(commands, host.noop_description, lines, host)
