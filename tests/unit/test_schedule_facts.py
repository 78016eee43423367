"""``CrontabText``'s command (tasks/facts/schedule.py) run by this machine's /bin/sh against a
scripted ``crontab`` on PATH: no crontab is an empty one, a listing passes as it is, and a
crontab that cannot be read fails the fact with crontab's own words instead of looking empty
(where ``--dry`` would then promise an entry the run refuses to write)."""

from __future__ import annotations

import os
import subprocess

import pytest

from tasks.facts.schedule import CrontabText

# The scripted crontab: its arguments to a file, then the behaviour the test asked for.
FAKE = """#!/bin/sh
printf '%s\\n' "$*" > "$CALLS"
case "$MODE" in
  listing) printf 'MAILTO=root\\n\\n# pyinfra-name=q\\n17 3 * * * /job.sh\\n' ;;
  none) echo "sudo: unable to resolve host h1" >&2; echo "no crontab for $2" >&2; exit 1 ;;
  denied) echo "crontab: Permission denied" >&2; exit 1 ;;
  warned) echo "sudo: unable to resolve host h1" >&2; echo "5 5 * * * /other" ;;
esac
"""


def run(tmp_path, mode: str, user: str | None = "root"):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "crontab").write_text(FAKE)
    (bin_dir / "crontab").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "MODE": mode, "CALLS": str(tmp_path / "calls")}
    done = subprocess.run(["/bin/sh", "-c", CrontabText().command(user)], env=env, capture_output=True,
                          text=True, timeout=10)
    return done, (tmp_path / "calls").read_text().strip()


def test_a_listing_passes_as_it_is(tmp_path):
    done, calls = run(tmp_path, "listing")
    assert calls == "-u root -l"
    assert done.returncode == 0 and done.stderr == ""
    assert CrontabText().process(done.stdout.splitlines()) == ["MAILTO=root", "", "# pyinfra-name=q",
                                                                "17 3 * * * /job.sh"]


@pytest.mark.parametrize("user", ["root", None])
def test_no_crontab_is_an_empty_one_also_after_a_warning_sudo_printed(tmp_path, user):
    done, calls = run(tmp_path, "none", user)
    assert calls == ("-u root -l" if user else "-l")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_a_warning_on_a_listing_that_worked_is_not_the_crontab(tmp_path):
    done, _ = run(tmp_path, "warned")
    assert done.returncode == 0 and done.stdout.splitlines() == ["5 5 * * * /other"]


def test_a_crontab_that_cannot_be_read_fails_the_fact_with_crontabs_words(tmp_path):
    done, _ = run(tmp_path, "denied")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == "crontab: Permission denied"


def test_a_user_name_is_quoted(tmp_path):
    assert "crontab -u 'a b' -l" in CrontabText().command("a b")
