"""Suite-wide wiring for fast feedback.

- Lab tests (marked `lab`) need a Docker engine. Without one they are skipped with one reason,
  said once in the header and once in the `-rs` summary, instead of erroring test by test.
- Under pytest-xdist (`-n N --dist loadgroup`, as scripts/test runs it) every test module is one
  unit of work: its module-scoped lab and its file-order steps stay in one worker. Modules that
  share a lab (tests/labkit.py `LAB_GROUPS`, `LabPool`) are one unit together.
"""
from __future__ import annotations

import os

import pytest

from tests.labkit import LATER_MODULES, group_of

LAB_MARK = "lab"

_engine_problem: str | None = None


def _find_engine_problem() -> str | None:
    """Why no Docker engine can be used here, or None when one answers."""
    import docker
    import docker.errors

    try:
        docker.from_env(timeout=5).ping()
    except (docker.errors.DockerException, OSError) as exc:
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return (f"no Docker engine answers at {where} ({type(exc).__name__}); "
                "scripts/test starts one (as root) and builds the lab images")
    return None


def _lab_skip_reason() -> str:
    return f"lab tests need the Docker engine: {_engine_problem}"


def _module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


# The slowest modules, slowest first (serial run of 2026-12-01, pytest --durations: fix_mlflow
# 7.1 min, db_users 5.1, fleet 3.5, cleanup 3.2, verify_stack 4.1 with its two labs, mlflow3 2.0;
# 2026-12-02: no_secrets_in_output 3.0, fix_mlflow_compose 2.6, lab_compose 1.9, machine_hosts 6.1
# alone, with its teardown; crash_consistency 4.7, crash_consistency_compose 2.3, watcher_placement
# 2.7 with its machine host).
SLOWEST = ("test_fix_mlflow.py", "test_db_users.py", "test_machine_hosts.py", "test_crash_consistency.py",
           "test_verify_stack.py", "test_fleet.py", "test_fleet_output.py", "test_deploys_sudo.py",
           "test_watcher_placement.py", "test_cleanup.py", "test_watch.py", "test_crash_consistency_compose.py", "test_no_secrets_in_output.py", "test_fix_mlflow_compose.py", "test_fix_mlflow_mlflow3.py",
           "test_lab_compose.py", "test_lab.py", "test_remediate.py",
           "test_schedule.py", "test_fix_mlflow_ssh.py", "test_onboard.py")


def _slowness_rank(module: str) -> int:
    name = module.rsplit("/", 1)[-1]
    return SLOWEST.index(name) if name in SLOWEST else len(SLOWEST)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    global _engine_problem
    if any(item.get_closest_marker(LAB_MARK) for item in items):
        _engine_problem = _find_engine_problem()
    # A group's modules run one after the other, also without xdist, so that a shared lab is not
    # left idle while unrelated modules run; groups holding the slowest modules go first, so that
    # under xdist they do not start last and end the run late. File order within a module is kept.
    first_seen: dict[str, tuple[int, int]] = {}
    for index, item in enumerate(items):
        module = _module_of(item.nodeid)
        rank, seen = first_seen.get(group_of(module), (len(SLOWEST), index))
        first_seen[group_of(module)] = (min(rank, _slowness_rank(module)), seen)
    items.sort(key=lambda item: first_seen[group_of(_module_of(item.nodeid))])
    modules: dict[str, list[str]] = {}
    for item in items:
        group = modules.setdefault(group_of(_module_of(item.nodeid)), [])
        if _module_of(item.nodeid) not in group:
            group.append(_module_of(item.nodeid))
    config.stash[LATER_MODULES] = {module: group[i + 1:] for group in modules.values()
                                   for i, module in enumerate(group)}


def pytest_xdist_make_scheduler(config, log):
    """`--dist loadgroup`: a module, or a `LAB_GROUPS` group of modules, is one unit of work.

    Not xdist's own loadgroup: it tags node ids, which pytest 9.2 no longer lets it do
    (pytest-xdist issue #1386), and then silently spreads a module's tests over workers."""
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class LabGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return group_of(_module_of(nodeid))

    return LabGroupScheduling(config, log)


def pytest_report_header(config):
    if _engine_problem:
        return [f"lab: skipped; {_lab_skip_reason()}"]
    return []


def pytest_runtest_setup(item):
    # Raised here, before any (module-scoped) lab fixture runs, and from one place: `-rs` then
    # reports every lab test under this one line.
    if _engine_problem and item.get_closest_marker(LAB_MARK):
        pytest.skip(_lab_skip_reason())
