"""The one settings error: bad host data, named by host and key, never showing a secret."""

from __future__ import annotations

from pyinfra.api.exceptions import PyinfraError

from tasks.core.quoting import CONTROL_RE as _CONTROL  # what would break a problem over lines


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
