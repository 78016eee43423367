"""The watcher's state machine (tasks/core/watch.py) with the real catalog and an injected clock:
one remediation per incident, the catalog's throttle, the global limit, the breaker, burst
collapse, self-trigger suppression, the audit lines."""
from __future__ import annotations

import json

import pytest

from tasks.core.signatures import load_catalog
from tasks.core.watch import Settings, Watcher, audit_line, summary_line

SIGKILL = "2026-12-02T04:00:00.000000000Z [2026-12-02 04:00:00 +0000] [7] [ERROR] Worker (pid:{}) was sent SIGKILL! Perhaps out of memory?"
AUTH = '2026-12-02T04:00:00.0Z FATAL:  password authentication failed for user "{}"'
WATCHFILES = ("2026-12-02T04:00:00.0Z _rust_notify.WatchfilesRustInternalError: error in underlying watcher: "
              "Input/output error (os error 5)")


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return Clock()


def watcher(clock, **settings):
    return Watcher(load_catalog(), clock, Settings(**settings), configured_roles={"h1": ["quant_user"]})


def sigkill(w, host="h1", pid=711, container="quant-mlflow"):
    return w.feed_log(host, "mlflow", container, SIGKILL.format(pid))


def test_sigkill_line_is_one_fix_mlflow_decision_with_the_catalogs_throttle(clock):
    w = watcher(clock)
    decision = sigkill(w)
    assert decision is not None
    assert decision.describe() == "remediate fix_mlflow on h1 for quant-mlflow"
    assert decision.key == "fix_mlflow:quant-mlflow" and decision.signature == "mlflow-worker-sigkill"
    assert "was sent SIGKILL" in decision.evidence
    assert w.feed_log("h1", "mlflow", "quant-mlflow", "2026-12-02T04:00:00Z GET /health 200") is None
    clock.advance(12.5)
    w.finished(decision, ok=True)
    assert w.targets[("h1", decision.key)].until == clock.now + 1800  # the catalog's 30m


def test_burst_of_a_thousand_lines_is_one_remediation_in_every_phase(clock):
    w = watcher(clock, grace=10)
    first = sigkill(w)
    decisions = [sigkill(w, pid=1000 + i) for i in range(1000)]
    assert first is not None and decisions == [None] * 1000
    assert w.status()["h1/fix_mlflow:quant-mlflow"]["collapsed"] == 1000
    clock.advance(20)
    w.finished(first, ok=True)
    finished = [r for r in w.drain_audit() if r["kind"] == "action"]
    assert len(finished) == 1 and finished[0]["collapsed"] == 1000 and finished[0]["duration"] == 20
    # after the grace window, inside the throttle: throttled, audited once, never run
    clock.advance(11)
    assert [sigkill(w, pid=5000 + i) for i in range(1000)] == [None] * 1000
    throttled = w.drain_audit()
    assert [r["result"] for r in throttled] == ["throttled"]
    # after the throttle window: runs again, once
    clock.advance(1800)
    again = [sigkill(w, pid=9000 + i) for i in range(1000)]
    assert sum(d is not None for d in again) == 1


def test_own_lines_and_events_during_the_run_and_grace_are_suppressed(clock):
    w = watcher(clock, grace=30)
    decision = sigkill(w)
    assert decision is not None
    # the recreate: old container renamed -previous and stopped, the new one dies/starts
    for name in ("quant-mlflow-previous", "quant-mlflow", "quant-mlflow"):
        assert w.feed_event("h1", "mlflow", {"Action": "die", "Actor": {"Attributes": {"name": name}}}) is None
    assert w.feed_event("h1", "mlflow", {"Action": "oom", "Actor": {"Attributes": {"name": "quant-mlflow"}}}) is None
    clock.advance(5)
    w.finished(decision, ok=False)  # failed: a retry is due later, never a new trigger from its own lines
    clock.advance(10)
    assert sigkill(w) is None
    assert w.feed_event("h1", "mlflow", {"Action": "oom", "Actor": {"Attributes": {"name": "quant-mlflow"}}}) is None
    assert w.status()["h1/fix_mlflow:quant-mlflow"]["suppressed"] == 5
    # another host's identical container is not suppressed
    other = w.feed_event("h2", "mlflow", {"Action": "oom", "Actor": {"Attributes": {"name": "quant-mlflow"}}})
    assert other is not None and other.signature == "mlflow-oom-killed" and other.host == "h2"


def test_restart_loop_from_events_needs_the_catalogs_min_restarts(clock):
    w = watcher(clock)
    event = {"Action": "die", "Actor": {"Attributes": {"name": "quant-mlflow", "exitCode": "1"}}}
    assert w.feed_event("h1", "mlflow", event) is None
    clock.advance(1)
    assert w.feed_event("h1", "mlflow", {**event, "Action": "restart"}) is None
    clock.advance(1)
    decision = w.feed_event("h1", "mlflow", event)
    assert decision is not None and decision.signature == "mlflow-restart-loop"
    assert "3 within 600s" in decision.evidence and decision.key == "fix_mlflow:quant-mlflow"
    # postgres has no packaged fix for a restart loop: reported, nothing run
    for _ in range(3):
        assert w.feed_event("h1", "postgres", {"Action": "die", "Actor": {"Attributes": {"name": "pg"}}}) is None
    assert any(r["signature"] == "service-restart-loop" and r["action"] == "reported" for r in w.drain_audit())


def test_global_limit_queues_and_ready_hands_out_when_a_slot_frees(clock):
    w = watcher(clock, max_concurrent=1)
    first = sigkill(w, host="h1")
    assert first is not None
    assert sigkill(w, host="h2") is None  # queued
    assert w.ready() == []
    assert [r["result"] for r in w.drain_audit()] == ["started", "queued"]
    clock.advance(3)
    w.finished(first, ok=True)
    (second,) = w.ready()
    assert second.host == "h2" and w.running() == 1
    assert sigkill(w, host="h2") is None  # collapsed into the running one


def test_breaker_opens_after_n_failures_and_is_reported_once(clock):
    w = watcher(clock, breaker_failures=3, retry_delay=30, grace=10)
    decision = sigkill(w)
    attempts = []
    for _ in range(3):
        assert decision is not None
        attempts.append(decision.attempt)
        clock.advance(4)
        w.finished(decision, ok=False, detail="verification failed")
        clock.advance(29)
        assert w.ready() == []
        clock.advance(1)
        ready = w.ready()
        decision = ready[0] if ready else None
    assert attempts == [1, 2, 3] and decision is None
    audit = w.drain_audit()
    assert [r["result"] for r in audit if r["kind"] == "breaker"] == ["open"]
    assert "breaker open after 3 failed run(s)" in [r for r in audit if r["kind"] == "breaker"][0]["action"]
    clock.advance(10_000)
    assert sigkill(w) is None and w.ready() == []
    assert w.status()["h1/fix_mlflow:quant-mlflow"]["state"] == "open"


def test_a_verified_run_resets_the_failure_count(clock):
    w = watcher(clock, breaker_failures=2, retry_delay=1, grace=0)
    decision = sigkill(w)
    w.finished(decision, ok=False)
    clock.advance(1)
    (decision,) = w.ready()
    w.finished(decision, ok=True)
    assert w.status()["h1/fix_mlflow:quant-mlflow"]["failures"] == 0


def test_db_users_only_for_a_configured_role_and_keyed_by_role(clock):
    w = watcher(clock)
    decision = w.feed_log("h1", "postgres", "quant-postgres", AUTH.format("quant_user"))
    assert decision is not None and decision.key == "db_users:quant_user" and decision.containers == ()
    assert w.feed_log("h1", "backend", "quant-backend", AUTH.format("quant_user")) is None  # same target
    assert w.feed_log("h1", "postgres", "quant-postgres", AUTH.format("mallory")) is None
    reported = [r for r in w.drain_audit() if r["action"] == "reported"]
    assert "not a configured role" in reported[0]["result"]


def test_backend_watchfiles_and_unknown_lines(clock):
    w = watcher(clock)
    decision = w.feed_log("h1", "backend", "quant-backend", WATCHFILES)
    assert decision is not None and decision.remediation == "backend_reload"
    assert w.feed_log("h1", "redis", "quant-redis", "2026-12-02T04:00:00Z Ready to accept connections") is None
    # informational lines are audited, rate-limited to one per grace window
    for _ in range(50):
        w.feed_log("h1", "backend", "quant-backend", "2026-12-02T04:00:00Z Username already exists: concurrent_1")
    assert sum(r["signature"] == "load-test-duplicate-user" for r in w.drain_audit()) == 1


def test_audit_line_and_summary(clock):
    w = watcher(clock)
    decision = sigkill(w)
    clock.advance(14.2)
    w.finished(decision, ok=True)
    records = w.drain_audit()
    for record in records:
        data = json.loads(audit_line(record))
        assert {"time", "host", "signature", "evidence", "action", "result", "duration"} <= set(data)
    done = records[-1]
    assert done["time"] == "2027-01-15T08:00:14.200000Z" and done["duration"] == 14.2
    assert summary_line(done) == (
        "[h1] 2027-01-15T08:00:14Z mlflow-worker-sigkill: remediate fix_mlflow on h1 for quant-mlflow"
        " -> verified in 14.2s")


def test_one_remediation_at_a_time_per_host_the_next_queued_until_it_ends(clock):
    # db_users and the backend fix on one host share its last-run record: one after the other
    w = watcher(clock, max_concurrent=2, grace=5)
    db = w.feed_log("h1", "postgres", "quant-postgres", AUTH.format("quant_user"))
    assert db is not None and db.key == "db_users:quant_user"
    assert w.feed_log("h1", "backend", "quant-backend", WATCHFILES) is None  # queued behind it
    assert sigkill(w, host="h2") is not None  # another host: its own slot
    assert w.ready() == [] and w.running("h1") == 1 and w.running() == 2
    clock.advance(4)
    w.finished(db, ok=True)
    (backend,) = w.ready()
    assert backend.key == "backend_reload:quant-backend" and backend.host == "h1"
    results = [(r.get("remediation"), r["result"]) for r in w.drain_audit()]
    assert results == [("db_users", "started"), ("backend_reload", "queued"), ("fix_mlflow", "started"),
                       ("db_users", "verified")]


def test_a_lost_host_is_audited_once_down_and_once_back_with_how_long(clock):
    w = watcher(clock)
    w.host_down("h2", "NoValidConnectionsError: [Errno 111] Connection refused")
    clock.advance(3)
    w.host_down("h2", "again, from another stream")  # already down: not audited again
    assert w.down() == ["h2"]
    w.host_up("h1")  # was never down: nothing
    clock.advance(4.5)
    w.host_up("h2")
    w.host_up("h2")
    down, up = w.drain_audit()
    assert (down["kind"], down["result"], down["host"]) == ("connection", "disconnected", "h2")
    assert "Connection refused" in down["evidence"] and down["duration"] is None
    assert (up["result"], up["duration"]) == ("reconnected", 7.5) and w.down() == []
    assert summary_line(up).startswith("[h2] ") and "-> reconnected in 7.5s" in summary_line(up)


def test_each_host_reads_its_own_catalog(clock):
    """Host data remediate.catalog per host: a line is matched against its host's catalog only."""
    packaged = load_catalog()
    only_backend = tuple(s for s in packaged if s.id == "backend-watchfiles-io-error")
    w = Watcher(packaged, clock, Settings(), configured_roles={"h1": ["quant_user"], "h2": ["quant_user"]},
                catalogs={"h2": only_backend})
    assert w.feed_log("h2", "postgres", "quant-postgres", AUTH.format("quant_user")) is None
    assert w.feed_log("h2", "mlflow", "quant-mlflow", SIGKILL.format(1)) is None
    assert w.feed_log("h2", "backend", "quant-backend", WATCHFILES).key == "backend_reload:quant-backend"
    assert w.feed_log("h1", "postgres", "quant-postgres", AUTH.format("quant_user")).key == "db_users:quant_user"
    assert w.feed_event("h2", "mlflow", {"Action": "oom", "Actor": {"Attributes": {"name": "quant-mlflow"}}}) is None


# -- a watcher restarted on its audit file (Watcher.resume) ---------------------------------------

def earlier_watcher_audit(clock, outcomes, **settings) -> list[dict]:
    """The audit an earlier watcher wrote: one SIGKILL incident on h1 per outcome ("verified",
    "failed", or None: the watcher died during the run), runs 40 s apart, as JSON lines read back."""
    w = watcher(clock, grace=0, retry_delay=1, **settings)
    for n, outcome in enumerate(outcomes):
        decision = sigkill(w, pid=n)
        if decision is None:  # a retry is due: handed out by ready()
            clock.advance(1)
            (decision,) = w.ready()
        clock.advance(30)
        if outcome is not None:
            w.finished(decision, ok=outcome == "verified")
        clock.advance(10)
    return [json.loads(audit_line(r)) for r in w.drain_audit()]


def test_a_restarted_watcher_keeps_a_verified_runs_throttle(clock):
    records = earlier_watcher_audit(clock, ["verified"])
    clock.advance(60)  # the supervisor restarted it a minute later; the incident's lines go on
    w = watcher(clock, grace=0)
    assert w.resume(records) == 1
    (said,) = w.drain_audit()
    assert said["kind"] == "resume" and said["result"] == "resumed"
    assert said["action"].startswith("throttled until ") and said["target"] == "quant-mlflow"
    assert sigkill(w, pid=99) is None
    assert [r["result"] for r in w.drain_audit()] == ["throttled"]
    clock.advance(1800)  # the catalog's window, from the run's end
    assert sigkill(w, pid=100) is not None


def test_without_the_audit_the_same_lines_run_the_fix_again(clock):
    """What resume guards against: forced runs skip the host record's throttle."""
    earlier_watcher_audit(clock, ["verified"])
    clock.advance(60)
    assert sigkill(watcher(clock, grace=0), pid=99) is not None


def test_a_breaker_stays_open_across_a_restart_for_a_day(clock):
    records = earlier_watcher_audit(clock, ["failed", "failed", "failed"], breaker_failures=3)
    assert [r["result"] for r in records if r["kind"] == "breaker"] == ["open"]
    w = watcher(clock, breaker_failures=3)
    w.resume(records)
    assert "breaker open" in w.drain_audit()[0]["action"]
    assert sigkill(w, pid=99) is None and w.status()["h1/fix_mlflow:quant-mlflow"]["state"] == "open"
    clock.advance(86400)
    fresh = watcher(clock, breaker_failures=3)
    assert fresh.resume(records) == 0 and sigkill(fresh, pid=100) is not None


def test_a_run_the_watcher_died_in_counts_as_a_failure_toward_the_breaker(clock):
    records = earlier_watcher_audit(clock, ["failed", None], breaker_failures=3)
    assert [r["kind"] for r in records].count("action") == 1  # the second run never ended
    w = watcher(clock, breaker_failures=3, grace=0)
    w.resume(records)
    assert w.drain_audit()[0]["action"] == "2 failed run(s) in a row of 3"
    decision = sigkill(w, pid=99)  # not held back: tried again, its last chance
    assert decision is not None
    w.finished(decision, ok=False)
    assert [r["result"] for r in w.drain_audit() if r["kind"] == "breaker"] == ["open"]


def test_dry_runs_and_other_lines_carry_nothing_over(clock):
    w = watcher(clock, grace=0, dry=True)
    decision = sigkill(w)
    w.finished(decision, ok=True, result="dry-run")
    records = [json.loads(audit_line(r)) for r in w.drain_audit()]
    records += [{"kind": "action", "host": "h1", "time": "yesterday"}, ["not", "a", "record"],
                {"kind": "connection", "host": "h1", "result": "disconnected"}]
    fresh = watcher(clock, grace=0)
    fresh.resume(records)
    assert fresh.drain_audit() == [] and sigkill(fresh, pid=5) is not None
