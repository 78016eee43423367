"""Forced mode (tasks.core.remediation.force, the watcher's QUANT_REMEDIATE_ONLY): only the named
remediation runs, the others are deferred; the record's throttle does not hold it back; a key with
no finding in the logs still runs; a db_users role db_roles does not list is never run."""
from __future__ import annotations

import datetime as dt

import pytest

from tasks.core import signatures
from tasks.core.remediation import (
    STATUS_DEFERRED,
    STATUS_REPORTED,
    STATUS_RUN,
    decide,
    force,
    format_actions,
    parse_key,
    updated_record,
)
from tasks.core.signatures import load_catalog

CATALOG = load_catalog()
NOW = dt.datetime(2026, 12, 2, 4, 30, tzinfo=dt.UTC)
LINES = {
    ("mlflow", "q-mlflow"): "2026-12-02T04:20:00Z [ERROR] Worker (pid:7) was sent SIGKILL! Perhaps out of memory?",
    ("postgres", "q-pg"): '2026-12-02T04:21:00Z FATAL:  password authentication failed for user "quant_user"',
    ("backend", "q-backend"): ("2026-12-02T04:22:00Z WatchfilesRustInternalError: error in underlying watcher: "
                               "Input/output error (os error 5)"),
}
ROLES = ["quant_user", "reporting"]


def incident(record=None):
    findings = [f for (role, name), line in LINES.items()
                for f in signatures.match_lines(CATALOG, role, name, [line])]
    return decide(findings, CATALOG, record, NOW, ROLES)


def statuses(actions) -> dict[str, str]:
    return {a.key: a.status for a in actions}


def test_only_the_forced_remediation_runs_the_others_are_deferred():
    assert set(statuses(incident()).values()) == {STATUS_RUN}
    forced = force(incident(), "db_users:quant_user", ROLES)
    assert statuses(forced) == {"db_users:quant_user": STATUS_RUN, "fix_mlflow:q-mlflow": STATUS_DEFERRED,
                                "backend_reload:q-backend": STATUS_DEFERRED}
    assert forced[0].key == "db_users:quant_user" and forced[0].reason.startswith("forced (db_users:quant_user)")
    assert "deferred: only db_users:quant_user was asked for" in "\n".join(format_actions(forced))


def test_the_records_throttle_and_handled_do_not_hold_a_forced_run_back():
    ran = [a for a in incident() if a.key == "db_users:quant_user"]
    throttling = updated_record(None, ran, "2026-12-02T04:20:30Z", "verification failed")  # after the line
    assert statuses(incident(throttling))["db_users:quant_user"] == "throttled"
    (forced,) = [a for a in force(incident(throttling), "db_users:quant_user", ROLES) if a.key.startswith("db_")]
    assert forced.status == STATUS_RUN and "the record alone would say: throttled" in forced.reason
    handling = updated_record(None, ran, "2026-12-02T04:25:00Z", "verified")  # the line predates it
    assert statuses(incident(handling))["db_users:quant_user"] == "handled"
    assert statuses(force(incident(handling), "db_users:quant_user", ROLES))["db_users:quant_user"] == STATUS_RUN


def test_a_forced_key_without_a_finding_runs_but_never_for_an_unlisted_role():
    (added,) = force([], "backend_reload:q-backend", ROLES)
    assert (added.status, added.remediation, added.target, added.findings) == (
        STATUS_RUN, "backend_reload", "q-backend", [])
    (refused,) = force([], "db_users:postgres", ROLES)
    assert refused.status == STATUS_REPORTED and "never created" in refused.reason
    findings = signatures.match_lines(CATALOG, "postgres", "q-pg", [LINES[("postgres", "q-pg")].replace(
        "quant_user", "analytics")])
    (reported,) = force(decide(findings, CATALOG, None, NOW, ROLES), "db_users:analytics", ROLES)
    assert reported.status == STATUS_REPORTED  # decide's refusal stands


@pytest.mark.parametrize("key", ["db_users", ":quant_user", "db_users:", "none:x", ""])
def test_a_malformed_key_is_refused(key):
    with pytest.raises(ValueError, match="is not <remediation>:<target>"):
        parse_key(key)
