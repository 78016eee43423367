"""The one quoting layer for what reaches a shell, a unit file, a crontab, sudoers or an env file.

Shell: every value goes in as one word through :func:`shlex.quote` (a whole argv through
:func:`shlex.join`); a variable assignment through :func:`export_line`, which checks the name
(a name cannot be quoted). No value is ever put inside double quotes, where ``$(...)`` and
backquotes still run: a script keeps values in variables assigned from single-quoted words and
expands them (``"$NAME"``), which never re-reads them as code. ``tests/unit/test_command_quoting.py``
scans every command built in tasks/ for an interpolation that skipped this layer.

Line-based files (systemd units, crontab lines, sudoers, Docker env files, job scripts): their
readers split lines on more than ``\\n`` (systemd ends a line at ``\\r`` too; Python's
``splitlines`` at ``\\x0b``, ``\\x0c``, ``\\x1c``-``\\x1e``, ``\\x85``, ``\\u2028``, ``\\u2029``), so
a value with any control character could start a new directive. Settings refuse them before
anything runs; the renderers check again (:func:`one_line`, :func:`check_rendered`) so a value
that bypassed the settings still cannot inject a line.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable

# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# The same in free text (a rendered file, a document in settings), whose line breaks and tabs
# are its own.
TEXT_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_TEXT_CONTROL_NO_TAB_RE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")
SHELL_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def control_char(text: str) -> str | None:
    """The first control character in ``text`` as ``U+000D``, or None."""
    found = CONTROL_RE.search(text)
    return f"U+{ord(found[0]):04X}" if found else None


def one_line(value: str, what: str) -> str:
    """``value`` when it holds no control character; else ValueError naming ``what`` (never
    the value)."""
    if not isinstance(value, str):
        raise ValueError(f"{what}: expected text, got {type(value).__name__}")
    bad = control_char(value)
    if bad:
        raise ValueError(f"{what}: contains a control character ({bad})")
    return value


def check_rendered(text: str, what: str, *, tabs: bool = False) -> str:
    """``text`` (a whole rendered file) when its only control characters are its line breaks
    (and tabs, if ``tabs``); else ValueError naming ``what`` and the line."""
    pattern = TEXT_CONTROL_RE if tabs else _TEXT_CONTROL_NO_TAB_RE
    found = pattern.search(text)
    if found:
        line = text.count("\n", 0, found.start()) + 1
        raise ValueError(f"{what}, line {line}: contains a control character (U+{ord(found[0]):04X})")
    return text


def word(value: str | int) -> str:
    """One shell word: a number as digits, text through :func:`shlex.quote` (NUL refused: no
    argv can carry it)."""
    if isinstance(value, bool):
        raise ValueError("a shell word is text or a number, not true/false")
    if isinstance(value, int):
        return str(value)
    if "\x00" in value:
        raise ValueError("a shell word cannot hold a NUL character")
    return shlex.quote(value)


def argv_line(argv: Iterable[str | int]) -> str:
    """A command line from ``argv``: each item one word (:func:`word`)."""
    return " ".join(word(item) for item in argv)


def export_line(name: str, value: str) -> str:
    """``NAME='value'; export NAME`` for a POSIX shell script (the value one line)."""
    if not isinstance(name, str) or not SHELL_NAME_RE.fullmatch(name):
        raise ValueError(f"{name!r} is not a shell variable name")
    one_line(value, name)
    return f"{name}={word(value)}; export {name}"


def systemd_value(value: str, what: str) -> str:
    """``value`` for a systemd unit setting taken as it stands (``Description=``, ``User=``,
    ``OnCalendar=``, ``Documentation=``): ``%`` doubled (systemd expands specifiers there);
    control characters refused."""
    return one_line(value, what).replace("%", "%%")


def systemd_exec_word(value: str, what: str) -> str:
    """``value`` as one word of ``ExecStart=``: ``%`` (specifiers) and ``$`` (variables)
    doubled; double-quoted with C escapes when it holds a space, quote, backslash or ``;``.
    Control characters refused."""
    escaped = systemd_value(value, what).replace("$", "$$")
    if re.search(r"[\s\"'\\;]", escaped):
        escaped = '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return escaped
