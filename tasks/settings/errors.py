"""The one settings error: bad host data, named by host and key, never showing a secret."""

from __future__ import annotations

from pyinfra.api.exceptions import PyinfraError


class SettingsError(PyinfraError, ValueError):
    """Bad host data. One line per problem, each ``host 'h': block.key: what is wrong``.

    A PyinfraError, so pyinfra's CLI prints it as a line, not a traceback, and fails that host
    alone; a ValueError, so pure callers can catch it without pyinfra in mind."""

    def __init__(self, host_name: str, problems: list[str]):
        self.host_name = host_name
        self.problems = list(problems)
        super().__init__("\n".join(f"host '{host_name}': {p}" for p in self.problems))
