"""The cleanup without an engine: the `cleanup` settings block, guards, the FK walk, generated
SQL, parsing (tasks/settings/cleanup.py, tasks/core/cleanup_*.py)."""
import json
import os
import stat
from types import SimpleNamespace

import pytest

from tasks import settings as host_settings
from tasks.core import cleanup_sql, cleanup_vacuum
from tasks.core.cleanup_catalog import CleanupRefused, ForeignKey, TableCatalog, dependents_of
from tasks.core.cleanup_sql import Counts, plan_deletion
from tasks.core.pg_exec import PgTarget
from tasks.operations.cleanup import cleanup_target
from tasks.settings import SettingsError

PG = {"access": "docker", "container": "lab-postgres"}
LAB_FKS = (
    ForeignKey("portfolios_user_id_fkey", "public", "portfolios", ("user_id",), "public", "users",
               ("id",), "no action"),
    ForeignKey("trades_portfolio_id_fkey", "public", "trades", ("portfolio_id",), "public",
               "portfolios", ("id",), "cascade"),
    ForeignKey("user_sessions_user_id_fkey", "public", "user_sessions", ("user_id",), "public",
               "users", ("id",), "cascade"),
)


def settings(**over):
    # max_share 0.5: the lab's table (18 of 58 users are leftovers), as its inventory says.
    return host_settings.load("cleanup", "h", {"patterns": ["concurrent\\_%", "test\\_%"],
                                               "max_share": 0.5, **over})


def problems(**over):
    with pytest.raises(SettingsError) as err:
        settings(**over)
    return str(err.value)


def fake_host(data):
    return SimpleNamespace(name="h", data=data)


# --- settings ---------------------------------------------------------------------------------


def test_defaults_and_target():
    s = host_settings.load("cleanup", "h", None)
    assert s.patterns == ("concurrent\\_%", "test\\_%")  # the load tests' leftovers
    assert cleanup_target(fake_host({"postgres": PG}), s) == \
        PgTarget("docker", container="lab-postgres", database="quant")
    assert (s.table, s.column, s.foreign_keys, s.max_rows, s.allow_over_max) == \
        ("users", "username", "refuse", 1000, False)
    assert (s.lock_timeout, s.statement_timeout, s.lock_wait, s.min_age) == (5, 900, 60, None)


def test_defaults_come_from_group_data_and_host_wins():
    host = fake_host({"postgres": PG, "cleanup_defaults": {"patterns": ["load\\_%"], "max_rows": 5},
                      "cleanup": {"max_rows": 7}})
    s = host_settings.of_host(host, "cleanup")
    assert s.patterns == ("load\\_%",) and s.max_rows == 7


@pytest.mark.parametrize("patterns, needle", [
    ([""], "patterns[0]: is empty"),
    (["   "], "patterns[0]: is empty"),
    (["%"], "only wildcards"),
    (["%%"], "only wildcards"),
    (["_%"], "only wildcards"),
    (["test\\_%", "%_%"], "patterns[1]"),
    (["abc\\"], "lone escape"),
    ([], "non-empty list"),
    (None, "non-empty list"),
    ([3], "must be a string"),
])
def test_bad_patterns_are_refused_up_front(patterns, needle):
    assert needle in problems(patterns=patterns)


@pytest.mark.parametrize("pattern, needle", [
    ("test%", "also matches names that merely start with 'test' (e.g. 'testarossa_trader')"),
    ("%a%", "starts with a wildcard"),
    ("_test\\_%", "starts with a wildcard"),
    ("test_%", "unescaped '_'"),
    ("test\\_user_%", "unescaped '_'"),
    ("exact_name", "unescaped '_'"),
    ("qa\\_%", "only 3 literal characters before its first wildcard"),
    ("concurrent%", "merely start with 'concurrent'"),
    ("user%x", "merely start with 'user'"),
])
def test_broad_patterns_are_refused_unless_opted_in(pattern, needle):
    text = problems(patterns=["test\\_%", pattern])
    assert "cleanup.patterns[1]: " in text and needle in text and "allow_broad_patterns" in text
    assert "patterns[0]" not in text
    assert settings(patterns=[pattern], allow_broad_patterns=True).patterns == (pattern,)


@pytest.mark.parametrize("pattern", ["test\\_%", "concurrent\\_%", "concurrent\\_1762%", "load.test%",
                                     "test\\_%\\_tmp", "exact.name", "tmp-user-%"])
def test_narrow_patterns_pass(pattern):
    assert cleanup_sql.broad_pattern(pattern) is None
    assert settings(patterns=[pattern]).patterns == (pattern,)


def test_wildcard_only_stays_refused_with_the_opt_in():
    assert "only wildcards" in problems(patterns=["%"], allow_broad_patterns=True)


@pytest.mark.parametrize("value", [0, -0.1, 1.01, "0.1", True, None, float("nan")])
def test_max_share_is_a_share(value):
    assert "cleanup.max_share:" in problems(max_share=value)


def test_escaped_wildcards_are_literals():
    assert not cleanup_sql.wildcard_only("\\%")
    assert cleanup_sql.check_pattern("\\%") is None
    assert cleanup_sql.check_pattern("a\\\\") is None  # an escaped backslash at the end is fine


def test_every_problem_is_reported_at_once():
    text = problems(patterns=["%"], max_rows=0, foreign_keys="cascade", lock_timeout="1 fortnight",
                    statement_timeout="0", table="", surprise=1, min_age="soon")
    for needle in ("patterns[0]", "max_rows", "foreign_keys", "lock_timeout", "statement_timeout",
                   "table:", "surprise: unknown setting", "min_age"):
        assert needle in text, needle
    assert text.startswith("host 'h': cleanup.")


def test_postgres_access_is_validated_by_the_shared_loader():
    s = settings()
    with pytest.raises(SettingsError) as err:
        cleanup_target(fake_host({"postgres": {"access": "ftp"}}), s)
    assert "postgres.access" in str(err.value)
    with pytest.raises(SettingsError) as err:
        cleanup_target(fake_host({"postgres": {"access": "psql", "host": "127.0.0.1",
                                               "superuser_password": "hunter2"}}), s)
    assert "plaintext password" in str(err.value) and "hunter2" not in str(err.value)


@pytest.mark.parametrize("value, seconds", [(90, 90), ("90 min", 5400), ("2 hours", 7200),
                                            ("1d", 86400), ("30s", 30)])
def test_min_age(value, seconds):
    assert settings(min_age=value).min_age == seconds


@pytest.mark.parametrize("key, value", [("lock_timeout", "0"), ("lock_timeout", 0.0001),
                                        ("statement_timeout", "30d"), ("lock_wait", "2d")])
def test_timeouts_postgresql_cannot_take_are_refused(key, value):
    assert f"cleanup.{key}:" in problems(**{key: value})


def test_report_path_from_environment_wins():
    s = settings(report_path="/x.json")
    assert s.report_to({cleanup_vacuum.REPORT_ENV: "/y.json"}) == "/y.json"
    assert s.report_to({}) == "/x.json"


# --- the foreign-key walk and the guards ------------------------------------------------------


def test_dependents_follow_cascades_and_blocking_keys():
    deps = dependents_of("public", "users", LAB_FKS)
    assert [(d.fk.child_table, d.fk.on_delete, d.depth) for d in deps] == [
        ("portfolios", "no action", 1), ("user_sessions", "cascade", 1), ("trades", "cascade", 2)]
    assert deps[2].parent == 0


def test_set_null_children_are_not_followed():
    fks = (ForeignKey("a", "public", "notes", ("uid",), "public", "users", ("id",), "set null"),
           ForeignKey("b", "public", "attachments", ("nid",), "public", "notes", ("id",), "restrict"))
    deps = dependents_of("public", "users", fks)
    assert [d.fk.child_table for d in deps] == ["notes"]


def test_cycles_are_refused():
    fks = (ForeignKey("self", "public", "users", ("referrer",), "public", "users", ("id",), "no action"),)
    with pytest.raises(CleanupRefused, match="cycle"):
        dependents_of("public", "users", fks)


def _plan(s, matched=18, total=58, dependents=None):
    deps = dependents_of("public", "users", LAB_FKS)
    counts = Counts(matched, total, ("concurrent_1", "test_user_1"), dependents or {0: 3, 1: 18, 2: 0})
    return plan_deletion(s, TableCatalog(True, ("id", "username"), LAB_FKS), deps, counts)


def test_refuse_when_a_non_cascading_fk_has_rows():
    with pytest.raises(CleanupRefused) as err:
        _plan(settings())
    assert "3 rows in \"public\".\"portfolios\"" in str(err.value) and "nothing deleted" in str(err.value)


def test_refuse_is_fine_without_blocking_rows():
    plan = _plan(settings(), dependents={0: 0, 1: 18, 2: 0})
    assert plan.changed and plan.explicit == []


def test_delete_dependents_deletes_blocking_rows_deepest_first():
    fks = LAB_FKS + (ForeignKey("fills_trade_fkey", "public", "fills", ("trade_id",), "public",
                                "trades", ("id",), "restrict"),)
    s = settings(foreign_keys="delete_dependents")
    deps = dependents_of("public", "users", fks)
    counts = Counts(18, 58, (), {0: 3, 1: 18, 2: 6, 3: 2})
    plan = plan_deletion(s, TableCatalog(True, (), fks), deps, counts)
    assert [d.fk.child_table for d in plan.explicit] == ["fills", "portfolios"]
    script = cleanup_sql.delete_script(s, plan)
    assert script.index('DELETE FROM "public"."fills"') < script.index('DELETE FROM "public"."portfolios"') \
        < script.index('DELETE FROM "public"."users"')


def test_max_rows_refuses_unless_allowed():
    s = settings(foreign_keys="delete_dependents", max_rows=10)
    with pytest.raises(CleanupRefused, match="over max_rows 10"):
        _plan(s)
    assert _plan(settings(foreign_keys="delete_dependents", max_rows=10, allow_over_max=True)).changed


def test_default_max_share_refuses_a_large_share_of_the_table():
    s = host_settings.load("cleanup", "h", {"foreign_keys": "delete_dependents", "allow_over_max": True})
    assert s.max_share == 0.1
    with pytest.raises(CleanupRefused) as err:
        _plan(s)  # 18 of 58
    assert "18 of 58 rows" in str(err.value) and "(31%), over max_share 0.1" in str(err.value)
    assert "nothing deleted" in str(err.value)
    assert _plan(s, matched=5, total=58).changed  # 8.6%: fine
    assert _plan(s, matched=5, total=50).changed  # exactly 10%: fine


def test_max_share_is_checked_again_inside_the_transaction():
    s = settings(foreign_keys="delete_dependents", max_share=0.25)
    script = cleanup_sql.delete_script(s, _plan(s, matched=14))
    assert 'IF n > 0.25::numeric * (SELECT count(*) FROM "public"."users") THEN' in script
    assert "over max_share 0.25 of the table" in script


def test_matching_every_row_is_refused():
    with pytest.raises(CleanupRefused, match="every row"):
        _plan(settings(foreign_keys="delete_dependents"), matched=58, total=58)


def test_nothing_matching_is_no_change():
    assert not _plan(settings(), matched=0, dependents={}).changed


def test_plan_lines_list_counts_and_samples():
    lines = _plan(settings(foreign_keys="delete_dependents", sample_size=2)).lines
    assert lines[0].startswith('delete 18 of 58 rows from "public"."users"')
    assert "concurrent_1, test_user_1 (+16 more)" in lines[1]
    assert any("18 rows in \"public\".\"user_sessions\"" in line and "CASCADE" in line for line in lines)


# --- generated SQL ------------------------------------------------------------------------------


def test_match_condition_quotes_everything():
    s = settings(patterns=["it's\\_%"], column='user"name', min_age=60)
    cond = cleanup_sql.match_condition(s)
    assert cond == ('("user""name" LIKE E\'it\'\'s\\\\_%\') AND "created_at" < now() - '
                    "make_interval(secs => 60)")


def test_delete_script_is_one_transaction_under_the_advisory_lock():
    s = settings(foreign_keys="delete_dependents")
    script = cleanup_sql.delete_script(s, _plan(s))
    assert script.count("BEGIN;") == 1 and script.rstrip().endswith("COMMIT;")
    lock = script.index("pg_try_advisory_xact_lock")
    assert script.index("SET LOCAL lock_timeout") < lock < script.index("SET LOCAL statement_timeout")
    assert "FOR UPDATE" in script and "ON COMMIT DROP" in script
    assert "over max_rows 1000" in script and "match every row now" in script
    assert cleanup_sql.BUSY_MARK in script


def test_refuse_mode_rechecks_blocking_rows_inside_the_transaction():
    s = settings()
    script = cleanup_sql.delete_script(s, _plan(s, dependents={0: 0, 1: 1, 2: 0}))
    assert "dependents appeared in" in script and 'DELETE FROM "public"."portfolios"' not in script


def test_vacuum_script_runs_outside_a_transaction_with_timeouts():
    s = settings(lock_timeout="3s", statement_timeout="2min")
    script = cleanup_vacuum.vacuum_script(s, [("public", "audit_log"), ("odd schema", 'ta"ble')])
    assert "BEGIN;" not in script and "START TRANSACTION" not in script
    assert "SET lock_timeout = '3000ms'" in script and "SET statement_timeout = '120000ms'" in script
    assert script.index("pg_try_advisory_lock") < script.index("SET statement_timeout")
    assert 'VACUUM (ANALYZE, SKIP_LOCKED) "public"."audit_log";' in script
    assert 'VACUUM (ANALYZE, SKIP_LOCKED) "odd schema"."ta""ble";' in script
    assert "pg_stat_progress_vacuum" in script and "pg_advisory_unlock" in script


def test_parse_vacuum_output():
    tables = [("public", "a"), ("public", "b"), ("public", "c")]
    rows = cleanup_vacuum.parse_vacuum_output([
        "before|0|15000|5000|0", "after|0|0|5000|1",
        "before|1|7|3|2", "skipped|1|running|4242",
        "before|2|5|5|1", "after|2|5|5|1",
    ], tables)
    assert [r["status"] for r in rows] == ["vacuumed", "skipped", "skipped"]
    lines = cleanup_vacuum.describe_vacuum(rows)
    assert lines[0] == "VACUUM ANALYZE public.a: dead tuples 15000 -> 0, live 5000 -> 5000"
    assert "pid 4242" in lines[1] and "SKIP_LOCKED" in lines[2]


def test_vacuum_script_can_end_with_the_statistics_after_the_unlock():
    s = settings()
    plain = cleanup_vacuum.vacuum_script(s, [("public", "audit_log")])
    assert "stats|" not in plain
    script = cleanup_vacuum.vacuum_script(s, [("public", "audit_log")], statistics=True)
    assert script.index("pg_advisory_unlock") < script.index("SELECT 'stats|' || (SELECT json_build_object(")
    assert script.rstrip().endswith(")::jsonb::text;")  # one line: json_agg's own text has newlines


def test_parse_statistics_line():
    stats = {"database": "quant", "dead_tuples": 0, "tables": {"public.a": {"live": 1, "dead": 0}}}
    lines = ["before|0|5|5|1", "after|0|0|5|2", "f", "stats|" + json.dumps(stats)]
    assert cleanup_vacuum.parse_statistics_line(lines) == stats
    assert cleanup_vacuum.parse_statistics_line(["after|0|0|5|2"]) is None
    assert cleanup_vacuum.parse_statistics_line(["stats|{not json"]) is None


def test_parse_delete_output_and_description():
    s = settings(foreign_keys="delete_dependents")
    deps = dependents_of("public", "users", LAB_FKS)
    result = cleanup_sql.parse_delete_output(["matched|18", "dependent|0|3", "dependent|1|18", "dependent|2|0",
                                    "deleted|0|3", "deleted|root|18"])
    lines = cleanup_sql.describe_deletion(s, deps, result)
    assert lines[0] == 'deleted 18 rows from "public"."users"'
    assert any("3 rows deleted first" in x for x in lines)
    assert any("18 rows deleted by cascade" in x for x in lines)
    none = cleanup_sql.describe_deletion(s, deps, cleanup_sql.parse_delete_output(["matched|0", "deleted|root|0"]))
    assert "another run got them first" in none[0]


def test_statistics_sql_masks_literals_and_skips_itself():
    sql = cleanup_vacuum.stats_sql(3)
    assert cleanup_vacuum.masked_query_sql("a.query") in sql and "LIMIT 3" in sql
    assert "backend_type = 'client backend'" in sql and "pg_backend_pid()" in sql


def test_report_table_and_document(tmp_path):
    before = {"database": "quant", "database_size_bytes": 9 * 1024 * 1024, "table_count": 5,
              "live_tuples": 7000, "dead_tuples": 15000, "connections": {"idle": 3},
              "longest_query": None,
              "largest_tables": [{"table": "public.audit_log", "total_bytes": 1600000,
                                  "live": 5000, "dead": 15000}],
              "tables": {"public.audit_log": {"live": 5000, "dead": 15000}}}
    after = json.loads(json.dumps(before))
    after.update(dead_tuples=0, tables={"public.audit_log": {"live": 5000, "dead": 0}})
    text = cleanup_vacuum.format_report(before, after)
    assert "dead tuples" in text and "15000" in text
    assert "public.audit_log" in text and "dead 15000" in text and "dead 0" in text
    path = tmp_path / "r" / "report.json"
    cleanup_vacuum.write_report(str(path), cleanup_vacuum.report_document(settings(), before, after, {"deleted": 18}, []))
    doc = json.loads(path.read_text())
    assert doc["before"]["dead_tuples"] == 15000 and doc["after"]["dead_tuples"] == 0
    assert doc["deletion"] == {"deleted": 18}
    # 0600 whatever the umask, its new folder 0700, no temp file left behind
    old = os.umask(0)
    try:
        cleanup_vacuum.write_report(str(path), cleanup_vacuum.report_document(settings(), before, after))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]


def test_human_bytes():
    assert cleanup_vacuum.human_bytes(512) == "512 B"
    assert cleanup_vacuum.human_bytes(1536) == "1.5 KiB"
    assert cleanup_vacuum.human_bytes(None) == "-"
