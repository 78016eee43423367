"""Hostile values in the cleanup schedule: the job script is run for real (sh and bash, with a
stand-in pyinfra) with ``$(...)``, backquotes, ``;``, quotes and backslashes in every path and
variable it carries, and nothing they spell is executed; control characters never reach the
script, a unit file or the crontab line (settings refuse them, the renderers check again)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tasks import settings as host_settings
from tasks.core import schedule_units as sch
from tasks.settings import SettingsError

# Each writes a marker file when run by a shell; the job must carry it as text instead.
HOSTILE = [
    "$(touch {m}/dollar)",
    "`touch {m}/backquote`",
    "x; touch {m}/semicolon",
    "x && touch {m}/and",
    "x | touch {m}/pipe",
    '" ; touch {m}/dquote ; "',
    "' ; touch {m}/squote ; '",
    "\\$(touch {m}/backslash)",
    "$HOME ${{IFS}} * ? [a] ~",
]


def _settings(**over):
    return host_settings.load("cleanup_schedule", "ops", over)


@pytest.fixture
def hostile_job(tmp_path):
    """A job whose project dir, pyinfra path, inventory, deploy, group data, env values and
    report path all hold shell syntax; the stand-in pyinfra prints its argv one per line. A
    file name cannot hold '/', so the payloads in names touch relative paths: the job runs from
    the marks folder and cds into the project, and both must stay as they were."""
    marks = tmp_path / "marks"
    marks.mkdir()
    words = [w.format(m=marks) for w in HOSTILE]
    project = tmp_path / "proj $(touch dollar-in-dir) `touch backquote-in-dir`; touch semicolon-in-dir"
    project.mkdir()
    pyinfra = project / "py $(touch dollar-in-name) `touch backquote-in-name`"
    pyinfra.write_text('#!/bin/sh\nfor a in "$@"; do printf "arg<%s>\\n" "$a"; done\n'
                       'printf "env<%s>\\n" "$HOSTILE_A" "$HOSTILE_B"\n')  # fmt: skip
    pyinfra.chmod(0o755)
    s = _settings(
        project_dir=str(project),
        pyinfra=str(pyinfra),
        inventory=words[0] + words[2] + ".py",
        deploy=words[1] + words[3],
        group_data=words[4] + words[7],
        env={"HOSTILE_A": words[5], "HOSTILE_B": words[6] + words[8]},
        report_path=str(tmp_path / "report $(touch dollar-in-report).json"),
        script_path=str(tmp_path / "job.sh"),
        log_file=str(tmp_path / "log" / "job.log"),
        lock_file=str(tmp_path / "lock" / "job.lock"),
    )
    script = tmp_path / "job.sh"
    script.write_text(sch.job_script(s))
    script.chmod(0o755)
    return s, script, marks, words


@pytest.mark.parametrize("shell", ["sh", "bash"])
def test_shell_syntax_in_every_value_is_never_run(hostile_job, shell):
    if shutil.which(shell) is None:
        pytest.skip(f"no {shell}")
    s, script, marks, words = hostile_job
    proc = subprocess.run(["env", "-i", "setsid", shell, str(script)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60, cwd=marks)  # fmt: skip
    log = Path(s.log_file).read_text()
    made = sorted(p.name for p in (*marks.iterdir(), *Path(s.project_dir).iterdir()))
    assert made == [Path(s.pyinfra).name], f"executed: {made}\n{log}"
    assert proc.returncode == 0, proc.stderr + log
    # Every value arrived as the text it is: the argv, the env, the start line.
    for arg in sch.pyinfra_argv(s)[1:]:
        assert f"arg<{arg}>" in log
    assert f"env<{words[5]}>" in log and f"env<{words[6] + words[8]}>" in log
    start = next(line for line in log.splitlines() if ": start: " in line)
    assert start.endswith(": start: " + shlex.join(sch.pyinfra_argv(s)))


def _outside_single_quotes(script: str) -> str:
    """The script's text a shell would read with expansion: outside any quotes or inside double
    quotes (a small POSIX tokenizer: '...' literal, "..." with backslash escapes, # comments)."""
    out, state, i = [], None, 0
    while i < len(script):
        ch = script[i]
        if state is None:
            if ch == "'":
                state = "'"
            elif ch == '"':
                state = '"'
            elif ch == "\\":
                out.append(script[i : i + 2])
                i += 1
            elif ch == "#" and (i == 0 or script[i - 1] in " \t\n;"):
                while i < len(script) and script[i] != "\n":
                    i += 1
                continue
            else:
                out.append(ch)
        elif state == "'":
            if ch == "'":
                state = None
        else:
            if ch == "\\":
                out.append(script[i : i + 2])
                i += 1
            elif ch == '"':
                state = None
            else:
                out.append(ch)
        i += 1
    assert state is None, "unbalanced quotes"
    return "".join(out)


def test_values_appear_only_inside_single_quotes(hostile_job):
    """The mechanism, not only the cases: every value is in the script only as single-quoted
    text, never bare or inside double quotes (where $(...) and backquotes run)."""
    _s, script, _marks, _words = hostile_job
    text = script.read_text()
    assert "touch" in text
    readable = _outside_single_quotes(text)
    assert "touch" not in readable and "[a] ~" not in readable, readable


@pytest.mark.parametrize("bad", ["\n", "\r", "\x0b", "\x0c", "\x00", "\x1b", "\x85", "\u2028", "\u2029"])
@pytest.mark.parametrize("key", ["project_dir", "on_calendar", "inventory", "script_path", "lock_file"])
def test_settings_refuse_control_characters_where_they_land_in_units_and_scripts(key, bad):
    value = {"project_dir": "/srv/quant", "on_calendar": "*-*-* 03:17:00", "inventory": "inventories/x.py",
             "script_path": "/usr/local/lib/q.sh", "lock_file": "/var/lib/quant-remediation/q.lock"}[key]  # fmt: skip
    with pytest.raises(SettingsError) as err:
        _settings(**{key: value + bad + "ExecStartPre=/bin/sh -c 'id > /tmp/pwned'"})
    text = str(err.value)
    assert f"cleanup_schedule.{key}" in text and "Traceback" not in text
    assert "ExecStartPre" not in text  # the value is not echoed


@pytest.mark.parametrize("bad", ["\n", "\r", "\x0b", "\x0c", "\x85", "\u2028", "\x00"])
def test_renderers_refuse_control_characters_that_bypassed_the_settings(bad):
    """Second line of defence: a value put on the model without validation (model_copy does not
    validate) is refused by the renderer itself."""
    s = _settings(minute=17, hour=3)
    inject = f"{bad}ExecStartPre=/bin/sh"
    with pytest.raises(ValueError, match="control character"):
        sch.service_unit(s.model_copy(update={"project_dir": "/srv/q" + inject}))
    with pytest.raises(ValueError, match="control character"):
        sch.service_unit(s.model_copy(update={"script_path": "/srv/q.sh" + inject}))
    with pytest.raises(ValueError, match="control character"):
        sch.timer_unit(s.model_copy(update={"on_calendar": "daily" + inject}))
    with pytest.raises(ValueError, match="control character"):
        sch.job_script(s.model_copy(update={"inventory": "inv.py" + inject}))
    with pytest.raises(ValueError, match="control character"):
        sch.job_script(s.model_copy(update={"env": {"A": "x" + inject}}))
    with pytest.raises(ValueError, match="control character"):
        sch.cron_command(s.model_copy(update={"script_path": "/srv/q.sh" + inject}))


def test_unit_values_cannot_use_systemd_specifiers_or_expansion():
    s = _settings()
    odd = s.model_copy(update={"script_path": "/srv/my jobs/%n $USER.sh", "project_dir": "/srv/100%"})
    unit = sch.service_unit(odd)
    assert 'ExecStart="/srv/my jobs/%%n $$USER.sh"' in unit
    assert "Documentation=file:///srv/100%%25/tasks/operations/cleanup.py" in unit
    with pytest.raises(ValueError, match="cron reads '%'"):
        sch.cron_command(odd)
