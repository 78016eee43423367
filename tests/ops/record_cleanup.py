"""Record what the cleanup facts print (tests/ops/data/cleanup-*.txt), for tests/ops/test_cleanup_ops.py.

    .venv/bin/python -m tests.ops.record_cleanup     # needs a Docker engine and the lab's postgres image

Starts a throwaway `qtopscl-postgres` container from the lab's postgres image, loads the lab's
seed (tasks/lab/sql/seed.sql) and the incident's leftovers the way the lab makes them (test users,
portfolios for some of them, an audit_log full of dead tuples), runs each fact's own query through
psql exactly as the fact's command does (`psql -X -q -v ON_ERROR_STOP=1 -At -c <sql>`), saves
the output, and removes the container.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tasks.core.cleanup_catalog import catalog_sql, dependents_of, parse_catalog
from tasks.core.cleanup_sql import count_sql
from tasks.core.cleanup_vacuum import stats_sql
from tasks.lab.images import image_refs
from tasks.settings import load

DATA = Path(__file__).parent / "data"
SEED = Path(__file__).resolve().parents[2] / "tasks" / "lab" / "sql" / "seed.sql"
NAME = "qtopscl-postgres"
# What the lab's load-test burst leaves behind (tasks/lab/stack.py, _load_test_burst), in SQL.
INCIDENT = """
INSERT INTO users (username, email, created_at)
SELECT 'concurrent_' || (1762917765 + g / 5), 'c' || g || '@example.com', now() - interval '2 hours'
  FROM generate_series(0, 29, 5) g;
INSERT INTO users (username, email) SELECT 'test_user_' || n, 'tu' || n || '@example.com' FROM generate_series(1, 8) n;
INSERT INTO users (username, email) SELECT 'test_load_' || n, 'tl' || n || '@example.com' FROM generate_series(1, 4) n;
INSERT INTO portfolios (user_id, name) SELECT id, 'loadtest' FROM users
 WHERE username LIKE 'test\\_user\\_%' AND id % 2 = 0;
INSERT INTO audit_log (user_id, action) SELECT (g % 40) + 1, 'login' FROM generate_series(1, 20000) g;
DELETE FROM audit_log WHERE id % 4 <> 0;
"""


def psql(sql: str, database: str = "quant") -> str:
    """As the facts run it in docker mode (tasks.core.pg_exec.psql_argv): -X -q, stop on error, -At."""
    return subprocess.run(["docker", "exec", "-i", "-u", "postgres", NAME, "psql", "-X", "-q", "-v",
                           "ON_ERROR_STOP=1", "-At", "-d", database, "-c", sql],
                          check=True, capture_output=True, text=True).stdout


def main() -> None:
    image = image_refs()["postgres"]
    subprocess.run(["docker", "rm", "-f", NAME], capture_output=True)
    subprocess.run(["docker", "run", "-d", "--name", NAME, "-e", "POSTGRES_PASSWORD=recording-only",
                    image], check=True, capture_output=True)
    try:
        for _ in range(120):
            if subprocess.run(["docker", "exec", "-u", "postgres", NAME, "pg_isready", "-q"]).returncode == 0:
                break
            time.sleep(0.5)
        seed = "\\set mlflow_password 'recording-only'\n" + SEED.read_text() + INCIDENT
        subprocess.run(["docker", "exec", "-i", "-u", "postgres", NAME, "psql", "-X", "-q", "-v",
                        "ON_ERROR_STOP=1", "-d", "postgres"], input=seed, text=True, check=True,
                       capture_output=True)
        psql("ANALYZE")  # pg_stat_user_tables as a database some time after the load test
        time.sleep(1)  # the statistics collector's report interval
        settings = load("cleanup", "record", None)
        catalog = psql(catalog_sql(settings.schema, settings.table))
        deps = dependents_of(settings.schema, settings.table, parse_catalog(catalog).fks)
        outputs = {
            "cleanup-catalog": catalog,
            "cleanup-counts": psql(count_sql(settings, deps)),
            "cleanup-statistics": psql(stats_sql(settings.largest_tables)),
        }
        for name, text in outputs.items():
            (DATA / f"{name}.txt").write_text(text)
            print(f"wrote {DATA / name}.txt ({len(text)} chars)")
    finally:
        subprocess.run(["docker", "rm", "-f", NAME], capture_output=True)


if __name__ == "__main__":
    main()
