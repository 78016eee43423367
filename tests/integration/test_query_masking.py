"""The cleanup statistics' "longest running query" masking (tasks/core/cleanup_vacuum.py), run by a
real PostgreSQL (the lab's image, a throwaway container): every literal form and comment PostgreSQL
lexes is masked, whatever quote characters the text hides inside others, and a text cut short
(pg_stat_activity's track_activity_query_size) is masked to its end. Then a real running query,
read through the statistics query itself."""
from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid

import docker
import pytest

from tasks.core.cleanup_vacuum import masked_query_sql, stats_sql
from tasks.core.pg_sql import quote_literal
from tasks.lab.images import image_refs

pytestmark = pytest.mark.lab

S = "s3cr3t"  # every hostile text below hides it (numbered) where only a literal or comment may


@pytest.fixture(scope="module")
def pg():
    client = docker.from_env()
    name = f"qtmask-{uuid.uuid4().hex[:8]}"
    container = client.containers.run(image_refs()["postgres"], name=name, detach=True,
                                      environment={"POSTGRES_PASSWORD": uuid.uuid4().hex},
                                      labels={"quantlab.prefix": "qtmask"})
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            if psql(name, "SELECT 1", check=False).returncode == 0:
                break
            time.sleep(1)
        else:
            raise AssertionError(f"{name} did not start: {container.logs()[-2000:]!r}")
        yield name
    finally:
        container.remove(force=True, v=True)


def psql(name: str, sql: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["docker", "exec", "-i", "-u", "postgres", name, "psql", "-XAtq", "-v", "ON_ERROR_STOP=1"],
                          input=sql, capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


HOSTILE = [
    # (text, what the masked text must be)
    (f"SELECT * FROM u WHERE pw = 'a''{S}1' AND n = 1", "SELECT * FROM u WHERE pw = *** AND n = 1"),
    (f"SELECT E'a\\'{S}2', 'b'", "SELECT ***, ***"),
    (f"SELECT e'\\\\' , '{S}3'", "SELECT *** , ***"),
    (f"SELECT $$ it's {S}4 $$, 'ok'", "SELECT ***, ***"),
    (f"SELECT $tag$ {S}5 $$ still $tag$, \"it's\", '{S}6'", "SELECT ***, \"it's\", ***"),
    (f"SELECT U&'{S}7', B'0101', X'ff', N'{S}8', \"col\"\"x\" FROM t", "SELECT U&***, B***, X***, N***, \"col\"\"x\" FROM t"),
    (f"-- it's a comment with {S}9\nSELECT '{S}10'", "***\nSELECT ***"),
    (f"/* a /* nested */ it's {S}11 */ SELECT '{S}12'", "***"),
    (f"/* plain */ SELECT '{S}13' /* {S}14 */", "*** SELECT *** ***"),
    (f"SELECT 'cut short {S}15", "SELECT ***"),
    (f"SELECT $a$ cut short {S}16", "SELECT ***"),
    (f"/* cut short 'x {S}17", "***"),
    (f"ALTER ROLE r PASSWORD 'SCRAM-SHA-256$4096:{S}18'", "ALTER ROLE r PASSWORD ***"),
    (f"SELECT mytypE'{S}19\\' , 1", "SELECT mytypE*** , 1"),
    (f"SELECT \"it's\", '{S}20'", "SELECT \"it's\", ***"),
    (f"SELECT $1, $2 FROM t WHERE a = '{S}21' AND b = $3", "SELECT $1, $2 FROM t WHERE a = *** AND b = $3"),
    (f"SELECT '{S}22'''", "SELECT ***"),
    (f"SELECT 'x' '{S}23'", "SELECT *** ***"),
    (f"SELECT E'{S}24\\\\'", "SELECT ***"),
    (f"CREATE FUNCTION f() RETURNS int AS $body$ SELECT '{S}25' $body$ LANGUAGE sql", "CREATE FUNCTION f() RETURNS int AS *** LANGUAGE sql"),
    (f"SELECT $_$ {S}26 $_$ || $x1$ {S}27 $x1$", "SELECT *** || ***"),
    (f"SELECT '{S}28' -- trailing 'comment", "SELECT *** ***"),
    (f"SELECT 'é{S}29ü', \"naïve\"", "SELECT ***, \"naïve\""),
    (f"SELECT '{S}30\n{S}31'", "SELECT ***"),
    ("SELECT 1", "SELECT 1"),
    ("", ""),
]


def test_every_literal_form_and_comment_is_masked(pg):
    rows = ",\n".join(f"({i}, {quote_literal(text)})" for i, (text, _) in enumerate(HOSTILE))
    sql = (f"CREATE TEMP TABLE t(id int, q text);\nINSERT INTO t VALUES {rows};\n"
           f"SELECT json_agg(json_build_object('id', t.id, 'masked', {masked_query_sql('t.q', 10000)}) "
           f"ORDER BY t.id) FROM t;\n")
    masked = {row["id"]: row["masked"] for row in json.loads(psql(pg, sql).stdout)}
    for i, (text, expected) in enumerate(HOSTILE):
        assert S not in (masked[i] or ""), text
        assert (masked[i] or "") == expected, text


def test_masking_comes_before_the_cut():
    # cut to 200 characters after masking: a literal the cut would leave open is already gone
    assert "SELECT left(out, 200)" in masked_query_sql("q")


def test_the_statistics_show_a_running_query_masked(pg):
    running = threading.Thread(target=psql, args=(pg, f"SELECT pg_sleep(6), $$ {S}-dollar $$, E'x\\'{S}-e';"))
    running.start()
    try:
        time.sleep(2)
        out = psql(pg, stats_sql() + ";\n").stdout
    finally:
        running.join()
    longest = json.loads(out)["longest_query"]
    assert longest["query"] == "SELECT pg_sleep(6), ***, ***;"
    assert S not in out
