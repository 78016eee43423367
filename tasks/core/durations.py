"""Durations: one parser for every time setting (ages, timeouts, log windows, throttles)."""

from __future__ import annotations

import re
from typing import Any

DURATION_HINT = "use seconds, or a number with a unit, like 90, 500ms, 30s, 15m, 2h, 1 hour or 3d"

_UNITS = {
    "ms": 0.001, "msec": 0.001, "millisecond": 0.001, "milliseconds": 0.001,
    "": 1, "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
}  # fmt: skip
_DURATION_RE = re.compile(r"(\d+)\s*([a-z]*)", re.IGNORECASE)
MAX_SECONDS = 366 * 86400  # no setting here means more than a year; bigger is a typo


def parse_duration(value: Any) -> float:
    """
    Seconds from ``90``, ``"90"``, ``"500ms"``, ``"30s"``, ``"15m"``, ``"15min"``, ``"2h"``,
    ``"1 hour"``, ``"3d"``. Refused: negatives, fractions in text (``"1.5h"``: say ``90m``),
    unknown units, booleans, and anything over a year.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{value!r} is not a duration ({DURATION_HINT})")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION_RE.fullmatch(value.strip())
        unit = match[2].lower() if match else None
        if not match or unit not in _UNITS:
            raise ValueError(f"{value!r} is not a duration ({DURATION_HINT})")
        seconds = int(match[1]) * _UNITS[unit]
    if not 0 <= seconds <= MAX_SECONDS:
        raise ValueError(f"{value!r} is not a duration between 0 and a year")
    return seconds


def short_duration(seconds: float) -> str:
    """Compact text for logs and `docker logs --since`: 900 -> '15m', 7200 -> '2h', 0.5 -> '500ms'."""
    if seconds != int(seconds):
        return f"{round(seconds * 1000)}ms"
    whole = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole and whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


def postgres_interval(seconds: float) -> str:
    """A PostgreSQL timeout value (`SET lock_timeout = '5000ms'`): milliseconds, exact."""
    return f"{round(seconds * 1000)}ms"
