"""bench/mttr.py's pure part: Docker and audit timestamps, the first matching log line, one
repetition's figures from the audit records, the spread and the goal, the watcher's idle figures
from /proc counters, and the table. Loaded from bench/ by path (bench is scripts, not a package;
it imports nothing from tests, and its runtime imports wait until the lab is used)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
spec = importlib.util.spec_from_file_location("bench_mttr", BENCH / "mttr.py")
mttr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mttr)

SIGKILL = "[2026-12-02 08:00:01 +0000] [1] [ERROR] Worker (pid:41) was sent SIGKILL! Perhaps out of memory?"


def test_docker_and_audit_timestamps_are_epoch_seconds_utc():
    assert mttr.docker_time("1970-01-01T00:01:00.250000000Z") == pytest.approx(60.25)
    assert mttr.docker_time("1970-01-01T00:01:00Z") == 60.0
    assert mttr.audit_time("1970-01-01T00:01:02.500000Z") == pytest.approx(62.5)
    with pytest.raises(ValueError):
        mttr.docker_time("not a time")


def test_first_matching_line_after_since():
    logs = "\n".join([
        "1970-01-01T00:00:10.000000000Z booting worker",
        f"1970-01-01T00:00:11.500000000Z {SIGKILL}",
        f"1970-01-01T00:00:12.000000000Z {SIGKILL}",
        "garbage line without a stamp was sent SIGKILL! Perhaps out of memory?",
    ])
    assert mttr.first_line_time(logs, mttr.SIGKILL_MARK) == pytest.approx(11.5)
    assert mttr.first_line_time(logs, mttr.SIGKILL_MARK, since=11.9) == pytest.approx(12.0)
    assert mttr.first_line_time(logs, mttr.SIGKILL_MARK, since=13) is None
    assert mttr.first_line_time(logs, mttr.AUTH_MARK) is None


def record(kind, result, at, remediation="fix_mlflow", **extra):
    return {"kind": kind, "result": result, "time": f"1970-01-01T00:00:{at:09.6f}Z",
            "remediation": remediation, "signature": "mlflow-worker-sigkill", **extra}


def test_one_repetition_from_the_audit():
    records = [record("finding", "ignored", 11.0, remediation="db_users"),
               record("finding", "started", 12.25),
               record("finding", "collapsed", 13.0),
               record("action", "verified", 31.5, duration=18.9)]
    run = mttr.incident_figures(11.5, records, "fix_mlflow")
    assert run["decision_s"] == 0.75 and run["mttr_s"] == 20.0 and run["run_s"] == 18.9
    assert run["result"] == "verified" and run["actions"] == 1 and run["signature"] == "mlflow-worker-sigkill"


def test_a_failed_run_or_no_line_has_no_mttr():
    failed = [record("finding", "started", 12.0), record("action", "failed", 20.0, duration=7.0)]
    run = mttr.incident_figures(11.0, failed, "fix_mlflow")
    assert "mttr_s" not in run and run["decision_s"] == 1.0 and run["result"] == "failed"
    assert "decision_s" not in mttr.incident_figures(None, failed, "fix_mlflow")
    nothing = mttr.incident_figures(11.0, [], "db_users")
    assert nothing["result"] is None and nothing["actions"] == 0 and "mttr_s" not in nothing


def test_summary_spread_and_goal():
    runs = [{"remediation": "fix_mlflow", "mttr_s": m, "decision_s": 0.5, "run_s": m - 2,
             "signature": "mlflow-worker-sigkill"} for m in (22.0, 25.0, 31.0)]
    runs += [{"remediation": "db_users", "mttr_s": 8.0, "decision_s": 0.2, "run_s": 6.0},
             {"remediation": "db_users", "error": "RuntimeError: timed out"}]
    runs += [{"remediation": "backend_reload", "mttr_s": 40.0, "decision_s": 2.0, "run_s": 30.0}]
    summary = mttr.summarise(runs)
    assert summary["fix_mlflow"]["mttr_s"] == {"n": 3, "median": 25.0, "min": 22.0, "max": 31.0}
    assert summary["fix_mlflow"]["goal_met"] and summary["fix_mlflow"]["verified"] == 3
    assert summary["db_users"]["verified"] == 1 and not summary["db_users"]["goal_met"]  # one failed
    assert not summary["backend_reload"]["goal_met"]  # over 30 s
    assert mttr.spread([None]) == {"n": 0, "median": None, "min": None, "max": None}
    lines = "\n".join(mttr.markdown({"reps": 3, "summary": summary, "idle": {
        "seconds": 20.0, "cpu_percent": 0.4, "rss_mib_median": 60.0, "processes": 4, "python_rss_mib": 40.0,
        "pss_mib_median": 45.0}}))
    assert "| MLflow SIGKILL -> fix_mlflow | 3/3 | 0.5 s (0.5 to 0.5) | 23.0 s (20.0 to 29.0) | 25.0 s (22.0 to 31.0) | met |" in lines
    assert "| quant_user auth failure -> db_users | 1/2 |" in lines and lines.count("NOT met") == 2
    assert "0.4% of one CPU, 60.0 MiB resident (RSS sum; PSS 45.0 MiB) for the watcher and its 3 stream process(es)" in lines
    verdicts = mttr.verdicts({"summary": summary})
    assert [v[2] for v in verdicts] == ["met", "NOT met", "NOT met"]


def test_the_watchers_process_tree_and_its_idle_figures():
    parents = {10: 1, 11: 10, 12: 10, 13: 11, 20: 1, 21: 20}
    assert mttr.descendants(parents, 10) == {10, 11, 12, 13}
    assert mttr.descendants(parents, 99) == {99}
    # 10 and 11 alive at both ends; 13 started in between (all its ticks count); 12 ended (lost)
    idle = mttr.idle_figures({10: 500, 11: 40, 12: 7}, {10: 504, 11: 41, 13: 3}, 20.0, 100,
                             [61440, 62464, 61440], [40960, 40960, 41984], [30720, 31744, 30720])
    assert idle["cpu_s"] == 0.08 and idle["cpu_percent"] == 0.4 and idle["processes"] == 3
    assert idle["rss_mib_median"] == 60.0 and idle["rss_mib_max"] == 61.0 and idle["python_rss_mib"] == 40.0
    assert idle["pss_mib_median"] == 30.0
