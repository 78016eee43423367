"""Cron fields and systemd OnCalendar expressions, checked before they reach a crontab or a unit.

    cron_field_problem("minute", "*/15")          # None: fine
    cron_field_problem("minute", "61")            # "61 is out of range 0-59"
    on_calendar_problem("Mon..Fri *-*-* 03:17")    # None
    on_calendar_problem("*-*-* 25:00")             # "hour 25 is out of range 0-23"

Cron (Debian's cron): each field a ``*``, a number, a range ``a-b`` (a <= b) or a list of them,
each optionally stepped ``/n`` (n >= 1, at most the field's span); month and day-of-week also take
a three-letter name (``jan``, ``mon``) alone, as Debian's cron documents. OnCalendar
(systemd.time(7)): a shorthand (``daily``, ``hourly``, ...) or ``[weekdays] [date] [time] [zone]``
with each component in range; anything else, a control character included, is refused.
"""

from __future__ import annotations

import re

# Field -> (lowest, highest, names allowed alone).
CRON_FIELDS: dict[str, tuple[int, int, tuple[str, ...]]] = {
    "minute": (0, 59, ()),
    "hour": (0, 23, ()),
    "day_of_month": (1, 31, ()),
    "month": (1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
    "day_of_week": (0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
}
_CRON_ITEM = re.compile(r"(?P<range>\*|(?P<low>\d{1,4})(?:-(?P<high>\d{1,4}))?)(?:/(?P<step>\d{1,4}))?")


def cron_field_problem(field: str, text: str) -> str | None:
    """What is wrong with ``text`` as the cron ``field``, or None."""
    low, high, names = CRON_FIELDS[field]
    if not text:
        return "is empty"
    if text.lower() in names:
        return None
    for item in text.split(","):
        match = _CRON_ITEM.fullmatch(item)
        if not match:
            hint = f", or one of {', '.join(names)}" if names else ""
            return f"{item!r} is not a cron item (*, N, N-M, with /STEP, joined by commas{hint})"
        first = low if match["range"] == "*" else int(match["low"])
        last = high if match["range"] == "*" else int(match["high"] or match["low"])
        for number in (first, last):
            if not low <= number <= high:
                return f"{number} is out of range {low}-{high}"
        if first > last:
            return f"range {first}-{last} runs backwards"
        if match["step"] is not None:
            step = int(match["step"])
            if not 1 <= step <= high - low + 1:
                return f"step /{step} must be between 1 and {high - low + 1}"
    return None


CALENDAR_SHORTHANDS = frozenset(
    {"minutely", "hourly", "daily", "weekly", "monthly", "yearly", "annually",
     "quarterly", "semiannually"}
)  # fmt: skip
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_NAMES = {d: d for d in _DAYS} | {
    "monday": "mon", "tuesday": "tue", "wednesday": "wed", "thursday": "thu",
    "friday": "fri", "saturday": "sat", "sunday": "sun",
}  # fmt: skip
_CAL_VALUE = re.compile(
    r"(?P<a>\d{1,4})(?:\.\.(?P<b>\d{1,4}))?(?:/(?P<step>\d{1,4}))?|\*(?:/(?P<star_step>\d{1,4}))?"
)
_ZONE = re.compile(r"UTC|[A-Z][A-Za-z_+-]*(?:/[A-Za-z0-9_+-]+){0,2}")
MAX_CALENDAR = 256


def _calendar_component(name: str, text: str, low: int, high: int) -> str | None:
    for item in text.split(","):
        match = _CAL_VALUE.fullmatch(item)
        if not match:
            return f"{name} {item!r} is not *, N, N..M or with /STEP"
        numbers = [int(match[k]) for k in ("a", "b") if match[k] is not None]
        for number in numbers:
            if not low <= number <= high:
                return f"{name} {number} is out of range {low}-{high}"
        if len(numbers) == 2 and numbers[0] > numbers[1]:
            return f"{name} range {numbers[0]}..{numbers[1]} runs backwards"
        step = match["step"] or match["star_step"]
        if step is not None and int(step) < 1:
            return f"{name} step /{step} must be at least 1"
    return None


def _weekdays_problem(text: str) -> str | None:
    for item in text.split(","):
        for day in item.split(".."):
            if day.lower() not in _DAY_NAMES:
                return f"{day!r} is not a weekday (Mon..Sun)"
    return None


def _date_problem(text: str) -> str | None:
    parts = text.replace("~", "-").split("-")
    if len(parts) == 2:
        parts = ["*", *parts]
    if len(parts) != 3:
        return f"{text!r} is not a date ([YYYY-]MM-DD, * for any)"
    for name, part, low, high in zip(
        ("year", "month", "day"), parts, (1970, 1, 1), (2199, 12, 31), strict=True
    ):
        problem = _calendar_component(name, part, low, high)
        if problem:
            return problem
    return None


def _time_problem(text: str) -> str | None:
    parts = text.split(":")
    if len(parts) not in (2, 3):
        return f"{text!r} is not a time (HH:MM[:SS], * for any)"
    if len(parts) == 3:
        parts[2] = parts[2].split(".", 1)[0] if re.fullmatch(r"\d+\.\d+", parts[2]) else parts[2]
    for name, part, high in zip(("hour", "minute", "second"), parts, (23, 59, 59), strict=False):
        problem = _calendar_component(name, part, 0, high)
        if problem:
            return problem
    return None


def on_calendar_problem(text: str) -> str | None:
    """What is wrong with ``text`` as a systemd OnCalendar expression, or None."""
    if not text.strip():
        return "is empty"
    if len(text) > MAX_CALENDAR:
        return f"is longer than {MAX_CALENDAR} characters"
    if re.search(r"[^A-Za-z0-9*,./:~_+ -]", text):
        return "holds characters no calendar expression has"
    tokens = text.split()
    if len(tokens) == 1 and tokens[0].lower() in CALENDAR_SHORTHANDS:
        return None
    seen: list[str] = []
    for token in tokens:
        if ":" in token:
            kind, problem = "time", _time_problem(token)
        elif re.fullmatch(r"[*\d.,/]+[-~][*\d.,/~-]+", token):
            kind, problem = "date", _date_problem(token)
        elif not seen and token[:1].isalpha() and token.split("..")[0].split(",")[0].lower() in _DAY_NAMES:
            kind, problem = "weekdays", _weekdays_problem(token)
        elif seen and _ZONE.fullmatch(token) and token.lower() not in _DAY_NAMES:
            kind, problem = "zone", None
        else:
            return f"{token!r} is not a weekday, date, time or time zone"
        if problem:
            return problem
        if kind in seen:
            return f"names a {kind} twice"
        order = ("weekdays", "date", "time", "zone")
        if seen and order.index(kind) < order.index(seen[-1]):
            return f"the {kind} comes after the {seen[-1]} (order: weekdays, date, time, zone)"
        seen.append(kind)
    if not ({"date", "time", "weekdays"} & set(seen)):
        return "names no weekday, date or time"
    return None
