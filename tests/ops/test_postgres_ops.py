"""tasks.operations.postgres (role, database, grants) from the recorded catalog, without a
server: each case (tests/ops/postgres.<operation>/*.json) gives the operation's arguments and
what the catalog query printed, and says what the operation must do: nothing (and why), the exact
SQL it uploads and runs, the plan lines it logs, whether it verifies, or how it refuses."""
from __future__ import annotations

import pytest

from tasks.operations import postgres
from tests.ops.pg_harness import PASSWORD, cases, grant_spec, pinned, plan, target


@pytest.fixture(autouse=True)
def pinned_randomness(monkeypatch):
    with pinned(monkeypatch):
        yield


def arguments(case: dict) -> dict:
    kwargs = dict(case["args"])
    kwargs["target"] = target(case.get("target"))
    if "grants" in kwargs:
        kwargs["grants"] = [grant_spec(g) for g in kwargs["grants"]]
    return kwargs


def check(op, case: dict, monkeypatch) -> None:
    for name, value in case.get("env", {}).items():
        monkeypatch.setenv(name, value)
    kwargs = arguments(case)
    if "exception" in case:
        with pytest.raises(Exception, match=case["exception"]) as info:
            plan(op, case, **kwargs)
        assert type(info.value).__name__ == case["exception_type"]
        assert PASSWORD not in str(info.value)
        return
    planned = plan(op, case, **kwargs)
    assert planned.host.asked == case["fact"]
    assert planned.rendered() == case["commands"]
    assert planned.noop == case.get("noop_description")
    assert planned.plan == case.get("plan", [])
    notes = [m.removeprefix("note: ") for m in planned.host.logs if m.startswith("note: ")]
    assert notes == case.get("notes", [])
    # The role's password is never in a command, an upload, a plan line or a fact argument
    # (only its verifier is uploaded); no password is ever on a command line (the superuser's
    # travels in an uploaded 0600 password file).
    assert PASSWORD not in repr(planned.rendered()) + repr(planned.plan) + repr(planned.host.asked)
    lines = [c for c in planned.rendered() if isinstance(c, str)] + planned.host.fact_commands
    for secret in [PASSWORD, *case.get("env", {}).values()]:
        assert not any(secret in line for line in lines)
    if "fact_command" in case:
        assert planned.host.fact_commands == [case["fact_command"]]
    if "fact_time_commands" in case:
        assert planned.host.run == case["fact_time_commands"]
        assert sorted(planned.host.uploads) == case["fact_time_uploads"]


@pytest.mark.parametrize("case", cases("postgres.role"))
def test_role(case, monkeypatch):
    check(postgres.role, case, monkeypatch)


@pytest.mark.parametrize("case", cases("postgres.database"))
def test_database(case, monkeypatch):
    check(postgres.database, case, monkeypatch)


@pytest.mark.parametrize("case", cases("postgres.grants"))
def test_grants(case, monkeypatch):
    check(postgres.grants, case, monkeypatch)


# --- the db_users deploy: settings in, the operations it plans out -----------------------------

MATCHING_DIGEST = ("SCRAM-SHA-256$4096:cmVjb3JkZWQtc2FsdC0xNg==$"
                   "f1c3170a6780cf1d790ffeff67fb8b5d5bec0464eff4b77b4abc78c2cfffee3f")  # of PASSWORD


def deploy_plan(host_data: dict, case: dict) -> list[tuple[str, list]]:
    """Run the db_users deploy for one host through pyinfra's own State and Inventory, the
    catalog fact answered from ``case``; per operation: its name and its SQL (or its noop)."""
    from unittest.mock import patch

    from pyinfra.api import Config, FileUploadCommand, FunctionCommand, Inventory, State
    from pyinfra.api.deploy import add_deploy
    from pyinfra.api.host import Host
    from pyinfra.context import ctx_host, ctx_state

    from tasks.operations.db_users import db_users
    from tests.ops.pg_harness import CatalogHost

    inventory = Inventory(([("h1", dict(host_data))], {}))
    state = State(inventory, Config())
    host = inventory.get_host("h1")
    catalog = CatalogHost(case)

    def get_fact(self, fact_cls, **kwargs):
        return catalog.get_fact(fact_cls, **{k: v for k, v in kwargs.items() if not k.startswith("_")})

    steps = []
    with patch.object(Host, "get_fact", get_fact):
        add_deploy(state, db_users, host=[host])
        with ctx_state.use(state), ctx_host.use(host):
            for op_hash in state.get_op_order():
                name = ", ".join(n.rpartition(" | ")[2] for n in state.op_meta[op_hash].names)
                done = []
                for command in state.ops[host][op_hash].command_generator():
                    if isinstance(command, FileUploadCommand) and command.dest.endswith("script.sql"):
                        command.src.seek(0)
                        done += [line for line in command.src.read().splitlines()
                                 if line not in ("\\set VERBOSITY terse", "SET lock_timeout = '10s';",
                                                 "BEGIN;", "COMMIT;")]
                    elif isinstance(command, FunctionCommand):
                        done.append("verify: " + "; ".join(c[0] for c in command.args[0]))
                steps.append((name, done))
    return steps


def test_db_users_deploy_plans_each_setting_once(monkeypatch):
    monkeypatch.setenv("QUANT_OPS_PASSWORD", PASSWORD)
    host_data = {
        "postgres": {"container": "qtops-postgres"},
        "db_roles": [{"name": "quant-user", "password": {"env": "QUANT_OPS_PASSWORD"}, "login": True},
                     {"name": "readers", "login": False},
                     {"name": "v_ascii", "present": False}],
        "db_databases": [{"name": "quant-db", "owner": "app_owner"}],
        "db_grants": [
            {"role": "quant-user", "database": "quant-db", "privileges": ["CONNECT"]},
            {"role": "quant-user", "database": "quant-db", "schema": "app", "on": "tables",
             "privileges": ["SELECT", "INSERT"]},
        ],
        "db_default_privileges": [
            {"owner": "app_owner", "role": "quant-user", "database": "quant-db", "schema": "app",
             "on": "tables", "privileges": ["SELECT"]},
        ],
    }
    steps = deploy_plan(host_data, {"passwords": {"quant-user": MATCHING_DIGEST}})
    assert steps == [
        # password already right: only LOGIN changes; verified in the first database it may CONNECT to
        ("PostgreSQL role quant-user", ['ALTER ROLE "quant-user" WITH LOGIN;',
                                        "verify: role quant-user can log in with its password"]),
        ("PostgreSQL role readers", []),
        ("PostgreSQL role v_ascii", ['DROP ROLE "v_ascii";']),
        ("PostgreSQL database quant-db", []),
        ("PostgreSQL grants in quant-db", [
            'GRANT INSERT ON ALL TABLES IN SCHEMA "app" TO "quant-user";',
            "verify: role quant-user can use what it was granted"]),
    ]


def test_db_users_deploy_refuses_bad_settings_before_any_operation():
    from tasks.settings import SettingsError

    with pytest.raises(SettingsError, match=r"host 'h1': db_roles\[0\]\.password: a plaintext password"):
        deploy_plan({"postgres": {"container": "qtops-postgres"},
                     "db_roles": [{"name": "quant_user", "password": PASSWORD}]}, {})
