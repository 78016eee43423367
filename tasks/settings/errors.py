"""The one settings error: bad host data, named by host and key, never showing a secret."""

from __future__ import annotations

import re

from pyinfra.api.exceptions import PyinfraError

# What would break a problem over several lines, or hide part of it on a terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x00``)."""
    return _CONTROL.sub(lambda m: repr(m[0])[1:-1], text)


class SettingsError(PyinfraError, ValueError):
    """Bad host data. One line per problem, each ``host 'h': block.key: what is wrong``.

    A PyinfraError, so pyinfra's CLI prints it as a line, not a traceback, and fails that host
    alone; a ValueError, so pure callers can catch it without pyinfra in mind. Whatever a
    problem's text holds, it stays on its line: control characters are shown escaped."""

    def __init__(self, host_name: str, problems: list[str]):
        self.host_name = host_name
        self.problems = [one_line(str(p)) for p in problems]
        super().__init__("\n".join(f"host '{one_line(str(host_name))}': {p}" for p in self.problems))
