"""The cleanup's operations without a database: recorded fact output in (what the facts' queries
printed against the lab's schema and incident rows, tests/ops/data/cleanup-*.txt, recorded by
tests/ops/record_cleanup.py), the decision and the commands out.

Cases are JSON files in tests/ops/cleanup.<operation>/: the ``cleanup`` block, the facts
(``{"recorded": "<file stem>", "set": {top-level key: value}}``), and what must come out: a
``noop``, an ``error`` (nothing runs), or ``commands`` (the execution-time callback, its script's
content and order) and the plan ``logs`` (``--dry`` shows them).
"""
from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
from pyinfra.api.exceptions import OperationError
from pyinfra.connectors.util import CommandOutput, OutputLine

from tasks import settings as host_settings
from tasks.core.cleanup_sql import count_sql
from tasks.core.cleanup_vacuum import REPORT_ENV, vacuum_script
from tasks.core.pg_exec import PgTarget
from tasks.operations import cleanup
from tests.ops.recorded_plan import Output, plan_on_host

OPS = Path(__file__).parent
DEPLOY = OPS.parents[1] / "deploys" / "cleanup_database.py"
TARGET = PgTarget("docker", container="lab-postgres", database="quant")
POSTGRES = {"access": "docker", "container": "lab-postgres"}
# The recorded lab: 18 of 58 users are load-test leftovers, over the default max_share (0.1).
LAB = {"foreign_keys": "delete_dependents", "max_share": 0.5}


def cases(folder: str) -> list:
    paths = sorted((OPS / folder).glob("*.json"))
    assert paths, f"no cases in tests/ops/{folder}"
    return [pytest.param(json.loads(p.read_text()), id=p.stem) for p in paths]


def facts_of(case: dict) -> dict:
    return {name: Output.recorded(item["recorded"], **item.get("set", {}))
            for name, item in case["facts"].items()}


def check_outcome(case: dict, run) -> None:
    """Run ``run()`` (planning) and compare with the case's noop / error / commands / logs."""
    if "error" in case:
        with pytest.raises(OperationError) as err:
            run()
        assert str(err.value) == case["error"]
        return
    result = run()
    commands = result.commands()
    assert len(commands) == len(case["commands"]), commands
    assert result.noops == ([case["noop"]] if "noop" in case else [])
    for command, wanted in zip(commands, case["commands"]):
        callback, *args = command
        assert callback == wanted["callback"]
        if callback == "_run_delete":
            settings, target, _deps, script = args
        else:  # _run_vacuum: the script the callback sends for these tables
            settings, target, tables = args
            assert [list(t) for t in tables] == wanted["tables"]
            script = vacuum_script(settings, tables, statistics=True)
        assert target == TARGET
        for text in wanted.get("script_has", []):
            assert text in script, text
        for text in wanted.get("script_lacks", []):
            assert text not in script, text
        order = [script.index(text) for text in wanted.get("script_order", [])]
        assert order == sorted(order)
    plan_lines = [line for line in result.logs if line.startswith("plan: ")]
    assert plan_lines == case.get("logs", plan_lines)
    return result


@pytest.mark.parametrize("case", cases("cleanup.delete_matching_rows"))
def test_delete_matching_rows(case):
    settings = host_settings.load("cleanup", "h1", case["cleanup"])
    facts = facts_of(case)

    def run():
        result = plan_on_host(lambda: cleanup.delete_matching_rows(settings=settings, target=TARGET), facts)
        # The counts were asked with the SQL the deletion's guards are built from.
        counted = [a for a in result.asked if a.startswith("CleanupCounts(")]
        for text in case.get("counts_sql_has", []):
            assert text in counted[0], text
        return result

    check_outcome(case, run)


@pytest.mark.parametrize("case", cases("cleanup.vacuum_analyze"))
def test_vacuum_analyze(case):
    settings = host_settings.load("cleanup", "h1", case["cleanup"])
    check_outcome(case, lambda: plan_on_host(
        lambda: cleanup.vacuum_analyze(settings=settings, target=TARGET), facts_of(case)))


def test_vacuum_uses_the_statistics_it_is_given():
    settings = host_settings.load("cleanup", "h1", {"vacuum_tables": ["users"]})
    stats = json.loads(Output.recorded("cleanup-statistics"))
    result = plan_on_host(lambda: cleanup.vacuum_analyze(settings=settings, target=TARGET, stats=stats), {})
    assert result.asked == []  # no second statistics query
    assert [c[0] for c in result.commands()] == ["_run_vacuum"]


@pytest.mark.parametrize("environ, wanted", [({}, "/var/tmp/cleanup.json"),
                                             ({REPORT_ENV: "/srv/report.json"}, "/srv/report.json")])
def test_statistics_report_writes_where_the_environment_says(monkeypatch, environ, wanted):
    monkeypatch.delenv(REPORT_ENV, raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    settings = host_settings.load("cleanup", "h1", {"report_path": "/var/tmp/cleanup.json"})
    result = plan_on_host(lambda: cleanup.statistics_report(settings=settings, target=TARGET, before={}), {})
    [(callback, _settings, target, before, report_path)] = result.commands()
    assert (callback, target, before, report_path) == ("_write_statistics", TARGET, {}, wanted)


# --- the deploy's plan ---------------------------------------------------------------------------


def deploy_plan(cleanup_data: dict, facts: dict):
    return plan_on_host(lambda: runpy.run_path(str(DEPLOY)), facts,
                        host_data={"postgres": POSTGRES, "cleanup": cleanup_data})


RECORDED = {"PostgresStatistics": Output.recorded("cleanup-statistics"),
            "CleanupTable": Output.recorded("cleanup-catalog"),
            "CleanupCounts": Output.recorded("cleanup-counts")}


def test_deploy_plan_deletes_vacuums_and_reports():
    result = deploy_plan(LAB, RECORDED)
    assert [(name, [c[0] for c in commands]) for name, commands in result.steps] == [
        ("Delete load-test rows (guarded)", ["_run_delete"]),
        ("VACUUM (ANALYZE)", ["_run_vacuum"]),
        ("Statistics after cleanup", ["_write_statistics"]),
    ]
    # Statistics are read once (the "before" column and the VACUUM table list), against the
    # cleanup's database on the host's postgres connection.
    assert sum(a.startswith("PostgresStatistics(") for a in result.asked) == 1
    assert any(line.startswith("stats: statistics of quant") for line in result.logs)


def test_deploy_plan_without_vacuum():
    result = deploy_plan({**LAB, "vacuum": False}, RECORDED)
    assert [name for name, _ in result.steps] == ["Delete load-test rows (guarded)", "Statistics after cleanup"]


def test_deploy_refuses_bad_settings_before_reading_anything():
    with pytest.raises(host_settings.SettingsError) as err:
        deploy_plan({"patterns": ["%"]}, RECORDED)
    assert "cleanup.patterns[0]: '%' is only wildcards" in str(err.value)


# --- execution: what the deletion callback does with psql's answer ------------------------------


class PsqlHost:
    """The host at execution time: each psql run gets the next recorded (ok, stdout, stderr)."""

    name = "h1"
    print_prefix = ""

    def __init__(self, *answers):
        self.answers, self.scripts, self.logged = list(answers), [], []

    def run_shell_command(self, command, _stdin=None, **_):
        self.scripts.append(_stdin)
        ok, out, err = self.answers.pop(0)
        return ok, CommandOutput([OutputLine("stdout", x) for x in out] + [OutputLine("stderr", x) for x in err])

    def log(self, message, *_, **__):
        self.logged.append(message)

    def log_styled(self, message, *_, **__):
        self.logged.append(message)


def planned_delete():
    settings = host_settings.load("cleanup", "h1", LAB)
    result = plan_on_host(lambda: cleanup.delete_matching_rows(settings=settings, target=TARGET),
                          {k: RECORDED[k] for k in ("CleanupTable", "CleanupCounts")})
    [(callback, *args)] = result.commands()
    return getattr(cleanup, callback), args


def test_deletion_busy_lock_changes_nothing_and_says_so():
    callback, args = planned_delete()
    host = PsqlHost((False, [], ["psql:<stdin>:5: ERROR:  cleanup-lock-busy: another cleanup run holds "
                                 "the advisory lock on database quant (waited 60s); skipped, nothing changed"]))
    assert callback(None, host, *args) is False
    assert host.logged == ["cleanup: cleanup-lock-busy: another cleanup run holds the advisory lock on "
                           "database quant (waited 60s); skipped, nothing changed"]
    assert host.scripts == [args[-1]]  # the planned script, on psql's stdin


def test_deletion_failure_rolls_back():
    callback, args = planned_delete()
    host = PsqlHost((False, ["matched|18"], ["psql:<stdin>:9: ERROR:  cleanup-refused: 1001 rows match now, "
                                             "over max_rows 1000; nothing deleted"]))
    assert callback(None, host, *args) is False
    assert host.logged[-1].startswith("cleanup: deletion rolled back, nothing changed: ERROR:  cleanup-refused")


def test_deletion_reports_and_verifies(monkeypatch):
    callback, args = planned_delete()
    settings, target, deps, _script = args
    host = PsqlHost((True, ["matched|18", "dependent|0|4", "dependent|1|0", "dependent|2|0", "deleted|0|4",
                            "deleted|root|18"], []),
                    (True, ['{"matched" : 0, "total" : 40, "sample" : [], "dependents" : {}}'], []))
    results = {}
    monkeypatch.setattr(cleanup, "_results", lambda host: results)
    assert callback(None, host, *args) is True
    assert 'cleanup: deleted 18 rows from "public"."users"' in host.logged
    assert results["deletion"] == {"table": "public.users", "deleted": 18,
                                   "dependents": {"public.portfolios via portfolios_user_id_fkey": 4,
                                                  "public.user_sessions via user_sessions_user_id_fkey": 0,
                                                  "public.trades via trades_portfolio_id_fkey": 0},
                                   "deleted_first": {"public.portfolios via portfolios_user_id_fkey": 4}}
    assert host.scripts[1] == count_sql(settings, deps) + ";\n"  # the verification's fresh count
