"""deploys/cleanup_database.py against the lab's real PostgreSQL (incident scenario: leftover
`concurrent_<epoch>` and `test_*` users, some with portfolios, and an `audit_log` full of dead
tuples), through the real pyinfra CLI over @local.

Tests run in file order on one private lab: the refusals first (each must leave every table
exactly as it was), then two concurrent runs doing the real cleanup, then the second-run and
VACUUM checks.
"""
from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tasks import settings as host_settings
from tasks.core.cleanup_catalog import catalog_sql, dependents_of, parse_catalog
from tasks.core.cleanup_sql import BUSY_MARK, LOCK_KEYS, Counts, delete_script, plan_deletion
from tests.labkit import GROUP_DATA, REPO, ROWS, pyinfra_process, run_pyinfra, shared_lab, write_inventory

pytestmark = pytest.mark.lab

DEPLOY = REPO / "deploys" / "cleanup_database.py"
TEST_USERS = "(username LIKE 'concurrent\\_%' OR username LIKE 'test\\_%')"
LAB_CLEANUP = {"foreign_keys": "delete_dependents", "max_share": 0.5}  # as the lab's inventory
LOOKALIKE = "testarossa_trader"  # a real user `test%` would take


@pytest.fixture(scope="module")
def lab(request):
    return shared_lab(request, "incident", needs={ROWS}, changes={ROWS})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("cleanup")


def inventory(folder: Path, lab, name: str, host_data: dict | None = None, **cleanup) -> Path:
    data = {"cleanup": {**LAB_CLEANUP, **cleanup}, **(host_data or {})}
    return write_inventory(folder / f"{name}.py", lab.prefix, host_data=data)


def snapshot(lab) -> dict:
    """Every row of every table (as md5 per table) and how often each was vacuumed."""
    tables = ["users", "user_sessions", "portfolios", "trades", "audit_log"]
    rows = {t: lab.psql(f"SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, ',' ORDER BY "
                        f"t::text)), '') FROM {t} t") for t in tables}
    rows["vacuums"] = lab.psql("SELECT sum(vacuum_count) FROM pg_stat_user_tables")
    return rows


def test_incident_has_leftovers(lab):
    assert int(lab.psql(f"SELECT count(*) FROM users WHERE {TEST_USERS}")) >= 10
    assert int(lab.psql("SELECT count(*) FROM portfolios p JOIN users u ON u.id = p.user_id "
                        f"WHERE {TEST_USERS}")) >= 1
    assert int(lab.psql("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'audit_log'")) > 1000


def test_a_real_user_looks_like_a_test_user(lab):
    lab.psql(f"INSERT INTO users (username, email) VALUES ('{LOOKALIKE}', 'tr@quant.example') "
             "ON CONFLICT (username) DO NOTHING")
    assert lab.psql(f"SELECT count(*) FROM users WHERE username LIKE 'test%' "
                    f"AND username = '{LOOKALIKE}'") == "1"


@pytest.mark.parametrize("case, cleanup, needle", [
    ("missing-table", {"table": "no_such_table"}, 'table "public"."no_such_table" does not exist'),
    ("missing-column", {"column": "login"}, 'has no column "login"'),
    ("match-all", {"patterns": ["%"]}, "only wildcards: it matches every row"),
    ("empty", {"patterns": [""]}, "patterns[0]: is empty"),
    ("wildcards", {"patterns": ["test\\_%", "_%"]}, "patterns[1]: '_%' is only wildcards"),
    ("every-row", {"patterns": ["%.%", "concurrent\\_%", "test%"], "allow_broad_patterns": True,
                   "max_share": 1}, "match every row"),
    ("max-rows", {"max_rows": 3}, "over max_rows 3"),
    ("fk-refuse", {"foreign_keys": "refuse"}, "foreign keys without ON DELETE CASCADE"),
    # Broad patterns: refused by the settings, before anything is read.
    ("separator", {"patterns": ["test%"]}, "also matches names that merely start with 'test'"),
    ("underscore", {"patterns": ["test_%"]}, "has an unescaped '_'"),
    ("leading", {"patterns": ["%a%"]}, "starts with a wildcard"),
    # Opted in, the same pattern still stops at the share of the table it would take.
    ("share", {"patterns": ["test%"], "allow_broad_patterns": True, "max_share": 0.1},
     "over max_share 0.1"),
    ("share-default", {"max_share": None}, "over max_share 0.1"),
])
def test_guard_refuses_and_changes_nothing(lab, folder, case, cleanup, needle):
    cleanup = {k: v for k, v in cleanup.items() if v is not None}
    if case == "share-default":  # the lab's settings without their max_share: the default
        path = write_inventory(folder / f"{case}.py", lab.prefix,
                               host_data={"cleanup": {"foreign_keys": "delete_dependents"}})
    else:
        path = inventory(folder, lab, case, **cleanup)
    before = snapshot(lab)
    run = run_pyinfra(path, DEPLOY)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-2000:]
    assert needle in output, output[-2000:]
    assert snapshot(lab) == before  # no row deleted, no VACUUM run


def test_max_share_is_checked_again_inside_the_transaction(lab):
    """The deletion script's own guard, on the real server: a plan made when few rows matched
    (here: made up) meets a table where the match is now over max_share; nothing is deleted."""
    s = host_settings.load("cleanup", "h", {**LAB_CLEANUP, "max_share": 0.1})
    catalog = parse_catalog(lab.psql(catalog_sql("public", "users")))
    deps = dependents_of("public", "users", catalog.fks)
    plan = plan_deletion(s, catalog, deps, Counts(1, 58, (), {}))  # as if 1 of 58 matched
    before = snapshot(lab)
    proc = subprocess.run(["docker", "exec", "-i", "-u", "postgres", f"{lab.prefix}-postgres", "psql",
                           "-X", "-At", "-d", "quant"], input=delete_script(s, plan),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "cleanup-refused: 18 rows match now, over max_share 0.1 of the table; nothing deleted" \
        in proc.stderr, proc.stderr
    assert snapshot(lab) == before


def test_dry_lists_counts_and_sample_names(lab, folder):
    before = snapshot(lab)
    matched = int(lab.psql(f"SELECT count(*) FROM users WHERE {TEST_USERS}"))
    total = int(lab.psql("SELECT count(*) FROM users"))
    proc = pyinfra_process("--dry", "--group-data", str(GROUP_DATA), str(inventory(folder, lab, "dry")), str(DEPLOY),
                           timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-2000:]
    assert f"plan: delete {matched} of {total} rows from \"public\".\"users\"" in output
    assert "e.g. concurrent_" in output and "portfolios" in output and "deleted first" in output
    assert "dead tuples" in output  # statistics before
    assert snapshot(lab) == before


def test_lock_held_elsewhere_skips_clearly(lab, folder):
    before = snapshot(lab)
    k1, k2 = LOCK_KEYS
    holder = subprocess.Popen(
        ["docker", "exec", "-i", "-u", "postgres", f"{lab.prefix}-postgres", "psql", "-X", "-q",
         "-d", "quant", "-c", f"SELECT pg_advisory_lock({k1}, {k2}), pg_sleep(600)"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):  # up to a minute on a loaded machine
            if lab.psql(f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = {k1} "
                        f"AND objid = {k2} AND granted") == "1":
                break
            time.sleep(0.1)
        run = run_pyinfra(inventory(folder, lab, "busy", lock_wait=2), DEPLOY)
    finally:
        # Held for the whole run however slow the machine is, then let go.
        lab.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE query LIKE '%pg_sleep(600)%' AND pid <> pg_backend_pid()")
        holder.wait(timeout=30)
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert f"{BUSY_MARK}: another cleanup run holds the advisory lock on database quant" in output
    assert snapshot(lab) == before


def test_concurrent_runs_clean_up_once(lab, folder):
    matched = int(lab.psql(f"SELECT count(*) FROM users WHERE {TEST_USERS}"))
    real = lab.psql(f"SELECT md5(string_agg(u::text, ',' ORDER BY id)) FROM users u WHERE NOT {TEST_USERS}")
    dead_before = int(lab.psql("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'audit_log'"))
    runs, reports = {}, {n: folder / f"report-{n}.json" for n in ("a", "b")}

    def go(n):
        runs[n] = run_pyinfra(inventory(folder, lab, f"run-{n}"), DEPLOY,
                              env={"QUANT_CLEANUP_REPORT": str(reports[n])})
    threads = [threading.Thread(target=go, args=(n,)) for n in reports]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    for run in runs.values():
        assert run.returncode == 0 and run.errors == 0, (run.stdout + run.stderr)[-3000:]
    # No double work: between them the runs deleted each matching row exactly once.
    deleted = []
    for n in runs:
        doc = json.loads(reports[n].read_text())
        deleted.append((doc["deletion"] or {}).get("deleted", 0))
    assert sum(deleted) == matched, deleted
    assert lab.psql(f"SELECT count(*) FROM users WHERE {TEST_USERS}") == "0"
    assert lab.psql("SELECT count(*) FROM portfolios WHERE user_id NOT IN (SELECT id FROM users)") == "0"
    assert lab.psql("SELECT count(*) FROM user_sessions WHERE user_id NOT IN (SELECT id FROM users)") == "0"
    assert lab.psql(f"SELECT md5(string_agg(u::text, ',' ORDER BY id)) FROM users u "
                    f"WHERE NOT {TEST_USERS}") == real
    assert lab.psql(f"SELECT count(*) FROM users WHERE username = '{LOOKALIKE}'") == "1"
    # Dead tuples reclaimed, before -> after as pg_stat_user_tables reported them.
    assert int(lab.psql("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'audit_log'")) == 0
    docs = {n: json.loads(reports[n].read_text()) for n in reports}
    # Either run may be the one that vacuums audit_log: the two race for the lock.
    vacuumed_by = [n for n, doc in docs.items() for r in doc["vacuum"]
                   if r["table"] == "public.audit_log" and r["status"] == "vacuumed"
                   and r["dead_before"] == dead_before and r["dead_after"] == 0]
    assert vacuumed_by, [doc["vacuum"] for doc in docs.values()]
    # That run read its "before" statistics ahead of its own VACUUM; the run that finished last
    # read "after" once both runs' deletions and vacuums were done.
    assert docs[vacuumed_by[0]]["before"]["dead_tuples"] >= dead_before, docs[vacuumed_by[0]]["before"]
    assert any(doc["after"]["dead_tuples"] == 0 for doc in docs.values()), [d["after"] for d in docs.values()]
    for doc in docs.values():
        for key in ("database_size_bytes", "table_count", "largest_tables", "connections", "longest_query"):
            assert key in doc["after"]
    logs = runs["a"].stdout + runs["a"].stderr  # with --json, pyinfra logs to stderr
    assert "statistics of quant" in logs and "dead tuples" in logs


def test_second_run_deletes_nothing(lab, folder):
    run = run_pyinfra(inventory(folder, lab, "second"), DEPLOY)
    assert run.returncode == 0, (run.stdout + run.stderr)[-2000:]
    # VACUUM always runs and says so; the deletion reports no change.
    assert run.changed_ops() == ["Clean the database | VACUUM (ANALYZE)", "Clean the database | Statistics after cleanup"]
    assert "VACUUM ANALYZE public.audit_log: dead tuples 0 -> 0" in run.stdout + run.stderr


def test_vacuum_skips_a_table_another_vacuum_holds(lab, folder):
    holder = subprocess.Popen(
        ["docker", "exec", "-i", "-u", "postgres", f"{lab.prefix}-postgres", "psql", "-X", "-q",
         "-d", "quant"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        text=True)
    # SHARE UPDATE EXCLUSIVE is what a running VACUUM holds on its table.
    holder.stdin.write("BEGIN; LOCK TABLE audit_log IN SHARE UPDATE EXCLUSIVE MODE; "
                       "SELECT pg_sleep(600); COMMIT;\n")
    holder.stdin.close()
    try:
        for _ in range(600):  # up to a minute on a loaded machine
            if lab.psql("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                        "WHERE c.relname = 'audit_log' AND l.mode = 'ShareUpdateExclusiveLock'") == "1":
                break
            time.sleep(0.1)
        run = run_pyinfra(inventory(folder, lab, "vacuum-locked"), DEPLOY)
    finally:
        # Held for the whole run however slow the machine is (a fixed 8 s was seen to run out
        # before the deploy reached the VACUUM), then let go.
        lab.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                 "WHERE query LIKE '%pg_sleep(600)%' AND pid <> pg_backend_pid()")
        holder.wait(timeout=30)
    assert run.returncode == 0, (run.stdout + run.stderr)[-2000:]
    logs = run.stdout + run.stderr
    assert "VACUUM ANALYZE public.audit_log: skipped" in logs
    assert "VACUUM ANALYZE public.users: dead tuples" in logs


def test_psql_access_with_a_password_file(lab, folder):
    """The same deploy through host-side psql over TCP (0600 PGPASSFILE), no docker exec."""
    state = lab.state
    pg = {"access": "psql", "host": "127.0.0.1", "port": state["ports"]["postgres"],
          "superuser": "postgres",
          "superuser_password": {"file": state["secret_files"]["postgres_password"]}}
    lab.psql("INSERT INTO users (username, email) VALUES ('test_psql_1', 'x@example.com')")
    run = run_pyinfra(inventory(folder, lab, "psql", host_data={"postgres": pg}, vacuum=False), DEPLOY)
    assert run.returncode == 0, (run.stdout + run.stderr)[-2000:]
    assert "deleted 1 rows from" in run.stdout + run.stderr
    assert lab.psql("SELECT count(*) FROM users WHERE username = 'test_psql_1'") == "0"
    secret = Path(state["secret_files"]["postgres_password"]).read_text().splitlines()[0]
    assert secret not in run.stdout + run.stderr
