"""Files written through pyinfra's files.put (tasks/operations/text_files.py): with ``--diff``
(pyinfra's config.DIFF) the plan prints the change as files.put prints its own, for the files
uploaded by files.put and for sudoers, which is staged and checked before it is moved in place;
a text holding a literal secret is refused before anything is printed or uploaded."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyinfra import logger
from pyinfra.api import OperationError
from pyinfra_testing.util import FakeHost

from tasks.core.recap import plain
from tasks.operations import onboard
from tests.ops.harness import OpsState, plan

OPS = Path(__file__).parent


def case(folder: str, name: str) -> dict:
    return json.loads((OPS / folder / f"{name}.json").read_text())


@pytest.fixture
def diff(monkeypatch):
    """pyinfra's --diff for the planning state."""
    init = OpsState.__init__

    def with_diff(self):
        init(self)
        self.config.DIFF = True

    monkeypatch.setattr(OpsState, "__init__", with_diff)
    # files.put prints "Will modify" with host.log, which pyinfra_testing's host lacks
    monkeypatch.setattr(FakeHost, "log", lambda self, message, log_func=logger.info: log_func(message),
                        raising=False)


def diff_of(logs: list[str], path: str) -> list[str]:
    lines = [plain(line) for line in logs]
    start = next(i for i, line in enumerate(lines) if line.endswith(f"Will modify {path}"))
    out = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        out.append(line.strip())
    return out


def test_sudoers_change_is_diffed_against_the_live_file(diff):
    data = case("onboard.sudoers", "widened_by_hand")
    planned = plan(onboard.sudoers, data["facts"], **data["kwargs"])
    assert planned.rendered() == data["commands"]  # still staged, checked, moved
    lines = diff_of(planned.logs, "/etc/sudoers.d/quant-deploy")
    assert "- deploy ALL=(ALL) NOPASSWD: ALL" in lines
    assert "+ deploy ALL=(root) NOPASSWD: /usr/bin/systemctl restart docker" in lines


def test_sudoers_as_wanted_shows_no_diff(diff):
    data = case("onboard.sudoers", "noop")
    planned = plan(onboard.sudoers, data["facts"], **data["kwargs"])
    assert planned.rendered() == [] and not any("Will " in line for line in planned.logs)


def test_daemon_json_is_diffed_by_files_put(diff):
    data = case("onboard.docker_daemon_json", "merge_keeps_other_keys")
    planned = plan(onboard.docker_daemon_json, data["facts"], **data["kwargs"])
    assert planned.rendered() == data["commands"]
    lines = diff_of(planned.logs, "/etc/docker/daemon.json")
    assert any(line.startswith("+") and '"max-size": "20m"' in line for line in lines), lines
    assert any(line.startswith("-") and "registry-mirrors" in line for line in lines), lines


def test_without_diff_nothing_is_printed():
    data = case("onboard.sudoers", "widened_by_hand")
    planned = plan(onboard.sudoers, data["facts"], **data["kwargs"])
    assert not any("Will " in line for line in planned.logs)


def test_a_text_holding_a_secret_is_neither_diffed_nor_uploaded(diff):
    data = case("onboard.docker_daemon_json", "merge_keeps_other_keys")
    facts = data["facts"]
    facts["files.FileContents"]["path=/etc/docker/daemon.json"] = [
        "{", '  "registry-mirrors": ["https://mirror:s3cr3t-pw@mirror.example"]', "}"]
    with pytest.raises(OperationError, match="literal secret") as error:
        plan(onboard.docker_daemon_json, facts, **data["kwargs"])
    assert "s3cr3t-pw" not in str(error.value)
