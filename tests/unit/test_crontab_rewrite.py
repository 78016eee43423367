"""The crontab edit at execution time (tasks/operations/schedule.py ``_rewrite_crontab``) against a
scripted host: it lists the crontab as it is then (an edit made since the plan is kept), installs
the edited text from a private folder (0600 file, 0700 folder of the login user, never /tmp's
world-readable staging copy, never on a command line), removes the folder whatever happened, and
never takes a crontab it cannot read for an empty one."""

from __future__ import annotations

from functools import partial

import pytest
from pyinfra.api.exceptions import OperationError
from pyinfra.connectors.util import CommandOutput, OutputLine

from tasks.core.schedule_units import with_named_entry, without_named_entry
from tasks.operations.schedule import _rewrite_crontab

ENTRY = "17 3 * * * /usr/local/lib/quant-remediation/quant-db-cleanup.sh"
FOLDER = "/tmp/quant-cron.Ab12Cd34"


class ScriptedHost:
    name = "h1"

    def __init__(self, listing: tuple[bool, str, str], install_ok: bool = True):
        self.listing, self.install_ok = listing, install_ok
        self.commands: list[str] = []
        self.uploads: dict[str, str] = {}

    def run_shell_command(self, command, **_):
        text = str(command)
        self.commands.append(text)
        if text.endswith(" -l"):
            ok, out, err = self.listing
        elif text.startswith("mktemp -d"):
            ok, out, err = True, FOLDER, ""
        elif text.startswith("crontab "):
            ok, out, err = self.install_ok, "", "" if self.install_ok else "crontab: bad minute"
        else:
            ok, out, err = True, "", ""
        lines = [OutputLine("stdout", line) for line in out.splitlines()]
        lines += [OutputLine("stderr", line) for line in err.splitlines()]
        return ok, CommandOutput(lines)

    def put_file(self, src, dest, **_):
        self.uploads[dest] = src.read().decode()
        return True


def rewrite(host, edit, user="root"):
    _rewrite_crontab(None, host, edit, user)


def test_the_crontab_as_it_is_at_execution_is_edited_and_installed_from_a_private_file():
    # an entry another run added after the plan read the crontab is kept
    host = ScriptedHost((True, "MAILTO=root\n5 5 * * * /bin/added-meanwhile", ""))
    rewrite(host, partial(with_named_entry, name="q", entry=ENTRY))
    assert host.uploads == {f"{FOLDER}/crontab": f"MAILTO=root\n5 5 * * * /bin/added-meanwhile\n\n"
                                                  f"# pyinfra-name=q\n{ENTRY}\n"}
    assert host.commands == ["crontab -u root -l", "mktemp -d /tmp/quant-cron.XXXXXXXX",
                             f"chmod 600 {FOLDER}/crontab", f"crontab -u root {FOLDER}/crontab",
                             f"rm -rf {FOLDER}"]
    assert not any("/bin/added-meanwhile" in command for command in host.commands)


def test_no_crontab_yet_is_an_empty_one_and_the_login_users_own_has_no_u():
    host = ScriptedHost((False, "", "no crontab for deploy"))
    rewrite(host, partial(with_named_entry, name="q", entry=ENTRY), user=None)
    assert host.uploads[f"{FOLDER}/crontab"] == f"# pyinfra-name=q\n{ENTRY}\n"
    assert host.commands[0] == "crontab -l" and f"crontab {FOLDER}/crontab" in host.commands


def test_made_so_meanwhile_installs_nothing():
    host = ScriptedHost((True, "MAILTO=root", ""))
    rewrite(host, partial(without_named_entry, name="q"))
    assert host.commands == ["crontab -u root -l"] and not host.uploads


def test_a_crontab_that_cannot_be_read_is_an_error_and_nothing_is_written():
    host = ScriptedHost((False, "", "crontab: Permission denied"))
    with pytest.raises(OperationError, match="cannot read the crontab of root: crontab: Permission denied"):
        rewrite(host, partial(with_named_entry, name="q", entry=ENTRY))
    assert host.commands == ["crontab -u root -l"] and not host.uploads


def test_a_failed_install_says_why_and_the_private_folder_still_goes():
    host = ScriptedHost((True, "", ""), install_ok=False)
    with pytest.raises(OperationError, match="installing the crontab of root failed: crontab: bad minute"):
        rewrite(host, partial(with_named_entry, name="q", entry=ENTRY))
    assert host.commands[-1] == f"rm -rf {FOLDER}"
