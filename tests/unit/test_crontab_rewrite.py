"""The crontab edit at execution time (tasks/operations/schedule.py ``_rewrite_crontab``), its
commands run by this machine's /bin/sh against a scripted ``crontab`` on PATH (its crontab in a
file): it lists the crontab as it is then (an edit made since the plan is kept), installs the
edited text from a private folder (0600 file, 0700 folder of the login user, never /tmp's
world-readable staging copy, never on a command line) only if the crontab is still the one it
listed (else it starts again from the new text), removes the folder whatever happened, and never
takes a crontab it cannot read for an empty one."""

from __future__ import annotations

import os
import subprocess
from functools import partial
from pathlib import Path

import pytest
from pyinfra.api.exceptions import OperationError
from pyinfra.connectors.util import CommandOutput, OutputLine

from tasks.core.schedule_units import with_named_entry, without_named_entry
from tasks.facts.schedule import CrontabText
from tasks.operations.schedule import CRONTAB_TRIES, _rewrite_crontab

ENTRY = "17 3 * * * /usr/local/lib/quant-remediation/quant-db-cleanup.sh"
LIST_ROOT = CrontabText().command("root")  # root's crontab listed as the plan's fact lists it

# The scripted crontab: `-l` lists $STATE (none: "no crontab for"), FILE installs it; every `-l`
# is counted, and the ones named in $OTHER_EDITS are followed by another editor's line.
FAKE = """#!/bin/sh
printf '%s\\n' "$*" >> "$STATE.calls"
if [ "$1" = -u ]; then shift 2; fi
if [ "$1" = -l ]; then
  [ -n "$DENY" ] && { echo "crontab: Permission denied" >&2; exit 1; }
  n=$(( $(cat "$STATE.lists" 2>/dev/null || echo 0) + 1 )); echo $n > "$STATE.lists"
  [ -f "$STATE" ] || { echo "no crontab for root" >&2; exit 1; }
  cat "$STATE"
  case " $OTHER_EDITS " in *" $n "*) echo "5 5 * * * /bin/other-$n" >> "$STATE" ;; esac
  exit 0
fi
[ -n "$BAD" ] && { echo "crontab: bad minute" >&2; exit 1; }
cp "$1" "$STATE"
"""


class ShellHost:
    """A host whose commands /bin/sh runs here, with the scripted crontab first on PATH."""

    name = "h1"

    def __init__(self, tmp_path: Path, crontab: str | None, **behaviour: str):
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "crontab").write_text(FAKE)
        (bin_dir / "crontab").chmod(0o755)
        self.state = tmp_path / "crontab"
        if crontab is not None:
            self.state.write_text(crontab)
        self.env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "STATE": str(self.state), **behaviour}
        self.commands: list[str] = []
        self.uploads: dict[str, str] = {}
        self.folders: list[str] = []

    def run_shell_command(self, command, **_):
        text = str(command)
        self.commands.append(text)
        done = subprocess.run(["/bin/sh", "-c", text], env=self.env, capture_output=True, text=True, timeout=10)
        if text.startswith("mktemp -d"):
            self.folders.append(done.stdout.strip())
        lines = [OutputLine("stdout", line) for line in done.stdout.splitlines()]
        lines += [OutputLine("stderr", line) for line in done.stderr.splitlines()]
        return done.returncode == 0, CommandOutput(lines)

    def put_file(self, src, dest, **_):
        data = src.read()
        Path(dest).write_bytes(data)
        self.uploads[dest] = data.decode()
        return True

    @property
    def crontab(self) -> str | None:
        return self.state.read_text() if self.state.exists() else None

    @property
    def calls(self) -> list[str]:
        path = Path(f"{self.state}.calls")
        return path.read_text().splitlines() if path.exists() else []


def rewrite(host, edit, user="root"):
    _rewrite_crontab(None, host, edit, user)


def add(name="q"):
    return partial(with_named_entry, name=name, entry=ENTRY)


def test_the_crontab_as_it_is_at_execution_is_edited_and_installed_from_a_private_file(tmp_path):
    # an entry another run added after the plan read the crontab is kept
    host = ShellHost(tmp_path, "MAILTO=root\n5 5 * * * /bin/added-meanwhile\n")
    rewrite(host, add())
    assert host.crontab == f"MAILTO=root\n5 5 * * * /bin/added-meanwhile\n\n# pyinfra-name=q\n{ENTRY}\n"
    (folder,) = host.folders
    assert folder.startswith("/tmp/quant-cron.")
    assert host.uploads == {f"{folder}/listed": "MAILTO=root\n5 5 * * * /bin/added-meanwhile\n",
                            f"{folder}/crontab": host.crontab}
    assert host.commands[0] == LIST_ROOT and host.commands[-1] == f"rm -rf {folder}"
    assert not Path(folder).exists()  # the folder went, and the texts with it
    assert not any("/bin/added-meanwhile" in command for command in host.commands)
    assert host.calls == ["-u root -l", "-u root -l", f"-u root {folder}/crontab"]


def test_no_crontab_yet_is_an_empty_one_and_the_login_users_own_has_no_u(tmp_path):
    host = ShellHost(tmp_path, None)
    rewrite(host, add(), user=None)
    assert host.crontab == f"# pyinfra-name=q\n{ENTRY}\n"
    assert host.calls == ["-l", "-l", f"{host.folders[0]}/crontab"]


def test_made_so_meanwhile_installs_nothing(tmp_path):
    host = ShellHost(tmp_path, "MAILTO=root\n")
    rewrite(host, partial(without_named_entry, name="q"))
    assert host.commands == [LIST_ROOT] and not host.uploads and host.crontab == "MAILTO=root\n"


def test_a_crontab_changed_between_listing_and_installing_is_edited_again_from_the_new_text(tmp_path):
    """Another editor's line lands right after the listing: installing the edit of the old text
    would drop it. The install finds the crontab changed, installs nothing, and the edit starts
    again from the crontab as it now is."""
    host = ShellHost(tmp_path, "MAILTO=root\n", OTHER_EDITS="1")
    rewrite(host, add())
    assert host.crontab == f"MAILTO=root\n5 5 * * * /bin/other-1\n\n# pyinfra-name=q\n{ENTRY}\n"
    assert len(host.folders) == 2 and not any(Path(folder).exists() for folder in host.folders)
    assert host.calls.count(f"-u root {host.folders[0]}/crontab") == 0  # the first edit: never installed


def test_a_crontab_that_keeps_changing_is_an_error_and_ours_is_never_installed(tmp_path):
    host = ShellHost(tmp_path, "MAILTO=root\n", OTHER_EDITS=" ".join(str(n) for n in range(1, 20, 2)))
    with pytest.raises(OperationError, match=rf"the crontab of root changed each time between listing and "
                                             rf"installing \({CRONTAB_TRIES} tries\): nothing installed"):
        rewrite(host, add())
    assert "pyinfra-name=q" not in host.crontab and host.crontab.count("/bin/other-") == CRONTAB_TRIES
    assert not any(Path(folder).exists() for folder in host.folders)


def test_a_crontab_that_cannot_be_read_is_an_error_and_nothing_is_written(tmp_path):
    host = ShellHost(tmp_path, "MAILTO=root\n", DENY="1")
    with pytest.raises(OperationError, match="cannot read the crontab of root: crontab: Permission denied"):
        rewrite(host, add())
    assert host.commands == [LIST_ROOT] and not host.uploads and host.crontab == "MAILTO=root\n"


def test_a_failed_install_says_why_and_the_private_folder_still_goes(tmp_path):
    host = ShellHost(tmp_path, "MAILTO=root\n", BAD="1")
    with pytest.raises(OperationError, match="installing the crontab of root failed: crontab: bad minute"):
        rewrite(host, add())
    assert host.commands[-1] == f"rm -rf {host.folders[0]}" and not Path(host.folders[0]).exists()
    assert host.crontab == "MAILTO=root\n"
