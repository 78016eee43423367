"""The end of a run (tasks/core/recap.py): one recap line per host with its status and first
failure, the run's JSON document; and the progress lines a long wait prints
(tasks/checks/runner.py)."""
from __future__ import annotations

import json
import re

import gevent

from tasks.checks import runner
from tasks.checks.runner import NotYet, RetryPolicy, run_check
from tasks.core.recap import HostOutcome, OperationOutcome, one_line, plain, recap_lines, run_document


def fleet(count: int = 50, failing: int = 17) -> list[HostOutcome]:
    hosts = []
    for i in range(count):
        ops = [OperationOutcome("Fix the MLflow tracking server", "ok", 1.5)]
        host = HostOutcome(f"ml-{i:02d}", operations=ops)
        if i % 5 == 0:
            ops.append(OperationOutcome("MLflow container quant-mlflow", "changed", 31.0))
        if i == failing:
            ops.append(OperationOutcome("MLflow container quant-mlflow", "failed", 92.0))
            host.failed = True
            host.reason = ("MLflow container quant-mlflow: quant-mlflow: the new container failed "
                           "verification; previous container restored\nReasons:\n  quant-mlflow /health answers: "
                           "connection refused")
        hosts.append(host)
    hosts.append(HostOutcome("ml-gone", reachable=False, failed=True, reason="could not connect: timed out"))
    return hosts


def test_one_line_per_host_on_a_fleet_of_50_naming_the_failure():
    lines = recap_lines(fleet())
    assert lines[0] == "--> Recap:"
    assert len(lines) == 1 + 51 + 1
    rows = {re.match(r"\[([^\]]+)\]", line).group(1): line for line in lines[1:-1]}
    assert len(rows) == 51
    failing = rows["ml-17"]
    assert re.search(r"\bfailed\s+ok=1\s+changed=0\s+failed=1\s+unreachable=0\b", failing)
    assert failing.endswith("reason: MLflow container quant-mlflow: quant-mlflow: the new container failed "
                            "verification; previous container restored / Reasons: / quant-mlflow /health "
                            "answers: connection refused")
    assert re.search(r"\bchanged\s+ok=1\s+changed=1\s+failed=0\b", rows["ml-05"])
    assert re.search(r"\bok\s+ok=1\s+changed=0\s+failed=0\b", rows["ml-01"])
    assert "unreachable=1" in rows["ml-gone"] and "reason: could not connect: timed out" in rows["ml-gone"]
    assert "reason" not in rows["ml-01"]
    assert lines[-1] == "51 host(s): 39 ok, 10 changed, 1 failed, 1 unreachable"
    # the columns line up whatever the name's length
    assert len({line.index(" ok=") for line in lines[1:-1]}) == 1


def test_a_dry_run_counts_what_would_change():
    host = HostOutcome("h1", operations=[OperationOutcome("Compose file", "planned")])
    lines = recap_lines([host], dry=True)
    assert "dry run" in lines[0]
    assert re.search(r"\[h1\]\s+changed\s+ok=0\s+changed=1", lines[1])


def test_a_run_that_stopped_while_planning_says_so():
    host = HostOutcome("h1", failed=True, reason="Operation error: stack.retry_attempts: must be <= 1000")
    lines = recap_lines([host], dry=True, stopped=True)
    assert lines[0] == "--> Recap (stopped while planning: nothing was executed):"
    doc = run_document([host], run_id="r", deploys=[], dry=True, stopped=True, started=0.0, finished=1.0)
    assert doc["mode"] == "stopped" and doc["ok"] is False


def test_a_host_that_failed_while_planning_is_failed_with_its_reason():
    host = HostOutcome("h1", failed=True, reason="h1: mlflow.memory_limit: '1gb' is not a size")
    [_, row, total] = recap_lines([host])
    assert "failed=1" in row and row.endswith("reason: h1: mlflow.memory_limit: '1gb' is not a size")
    assert total == "1 host(s): 0 ok, 0 changed, 1 failed, 0 unreachable"


def test_reasons_are_one_plain_bounded_line():
    assert one_line("\x1b[31mred\x1b[0m\n  second\n\n third") == "red / second / third"
    assert len(one_line("x" * 1000)) == 300 and one_line("x" * 1000).endswith("...")
    assert plain("\x1b[1mbold\x1b[0m") == "bold"


def test_the_run_document_has_every_host_with_its_operations_plans_and_checks():
    hosts = fleet(5, failing=3)
    hosts[0].plans = ["recreate quant-mlflow:\n    memory: 420 MiB -> 1 GiB"]
    hosts[0].checks = [{"name": "mlflow /health answers", "status": "pass", "attempts": 3, "elapsed": 4.2}]
    hosts[0].elapsed = 40.123
    doc = run_document(hosts, run_id="r1", deploys=["deploys/fix_mlflow.py"], dry=False,
                       started=1_700_000_000.0, finished=1_700_000_100.5)
    json.dumps(doc)  # serialisable as it is
    assert doc["mode"] == "execute" and doc["elapsed"] == 100.5 and doc["ok"] is False
    assert doc["started"] == "2023-11-14T22:13:20+00:00"
    assert doc["totals"] == {"hosts": 6, "ok": 3, "changed": 1, "failed": 1, "unreachable": 1}
    assert sorted(doc["hosts"]) == ["ml-00", "ml-01", "ml-02", "ml-03", "ml-04", "ml-gone"]
    first = doc["hosts"]["ml-00"]
    assert first["status"] == "changed" and first["elapsed"] == 40.12
    assert first["operations"][1] == {"name": "MLflow container quant-mlflow", "status": "changed", "elapsed": 31.0}
    assert first["plans"] == hosts[0].plans and first["checks"] == hosts[0].checks
    failed = doc["hosts"]["ml-03"]
    assert failed["status"] == "failed" and failed["reason"].startswith("MLflow container quant-mlflow:")
    assert doc["hosts"]["ml-gone"]["unreachable"] is True and doc["hosts"]["ml-gone"]["failed"] == 0


def test_a_check_that_waits_says_so_every_period(monkeypatch):
    monkeypatch.setattr(runner, "PROGRESS_EVERY", 0.2)
    lines: list[str] = []
    answers = iter(range(100))

    def slow_service() -> str:
        gevent.sleep(0.1)  # one attempt's request (the CLI's monkey patching makes every wait yield)
        if next(answers) < 8:
            raise NotYet("connection refused")
        return "200 OK"

    result = run_check("slow /health answers", "http://127.0.0.1:1", slow_service,
                       RetryPolicy(attempts=50, seconds=30, wait=0.05), say=lines.append)
    assert result.status == "pass" and result.attempts == 9
    assert len(lines) >= 3, lines
    assert all(re.fullmatch(r"waiting for check 'slow /health answers' \(attempt \d+\): \d+s / 30s", line)
               for line in lines), lines
    attempts = [int(re.search(r"attempt (\d+)", line).group(1)) for line in lines]
    assert attempts == sorted(attempts) and attempts[-1] > attempts[0]
    gevent.sleep(0.5)
    assert len(lines) == len(attempts), "the progress lines stop with the wait"


def test_a_quick_check_prints_no_progress():
    lines: list[str] = []
    result = run_check("quick", "t", lambda: "ok", RetryPolicy(), say=lines.append)
    assert result.status == "pass" and lines == []


def test_progress_around_any_wait(monkeypatch):
    monkeypatch.setattr(runner, "PROGRESS_EVERY", 0.1)
    lines: list[str] = []
    with runner.progress("compose up mlflow", 120, say=lines.append):
        gevent.sleep(0.35)
    assert lines[:3] == ["waiting for compose up mlflow: 0s / 120s"] * 3


def test_a_failed_operation_is_named_as_its_host_knows_it_not_by_every_hosts_name():
    from types import SimpleNamespace

    from tasks.operations.recap import _op_name

    names = {f"Fix the MLflow tracking server | MLflow container h{i}-mlflow" for i in range(1, 51)}
    state = SimpleNamespace(get_op_meta=lambda op_hash: SimpleNamespace(names=names))
    assert _op_name(state, "x", "h7") == "Fix the MLflow tracking server | MLflow container h7-mlflow"
    assert _op_name(state, "x", "other").endswith("(and 49 more names on other hosts)")
