"""tasks.core.private_file: the reports' writer (cleanup, verify_stack, remediate)."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tasks.checks.report import write_report as write_verify_report
from tasks.core.cleanup_vacuum import write_report as write_cleanup_report
from tasks.core.private_file import write_private_text
from tasks.operations.remediate import write_report as write_remediate_report
from tasks.settings import load


@pytest.fixture
def open_umask():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_0600_whatever_the_umask_and_a_new_folder_0700(tmp_path, open_umask):
    path = write_private_text(tmp_path / "new" / "report.json", "{}\n")
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temp file left


def test_an_existing_world_readable_file_is_replaced_not_reused(tmp_path, open_umask):
    path = tmp_path / "report.json"
    path.write_text("old")
    path.chmod(0o644)
    write_private_text(path, "new")
    assert mode(path) == 0o600 and path.read_text() == "new"


def test_a_symlink_in_its_place_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    link = tmp_path / "report.json"
    link.symlink_to(victim)
    write_private_text(link, "report")
    assert victim.read_text() == "keep"
    assert not link.is_symlink() and link.read_text() == "report" and mode(link) == 0o600


def test_every_report_writer_uses_it(tmp_path, open_umask):
    cleanup = tmp_path / "c" / "cleanup.json"
    write_cleanup_report(str(cleanup), {"a": 1})
    verify = tmp_path / "v" / "verify.json"
    write_verify_report(verify, {"host": "h1", "checks": []}, run_id="r1")
    settings = load("remediate", "h1", {"report_dir": str(tmp_path / "r")})
    remediate = write_remediate_report(settings, "h1", {"findings": []})
    for path in (cleanup, verify, remediate):
        assert mode(path) == 0o600, path
        assert mode(os.path.dirname(path)) == 0o700, path
        json.loads(Path(path).read_text())
