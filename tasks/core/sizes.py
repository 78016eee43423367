"""Docker memory sizes: one parser and two spellings, shared by settings, specs and compose."""

from __future__ import annotations

import re
from typing import Any

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

# Docker refuses memory limits below 6 MiB ("Minimum memory limit allowed is 6MB").
DOCKER_MIN_MEMORY = 6 * MIB

_SIZE_UNITS = {"b": 1, "k": KIB, "m": MIB, "g": GIB, "t": 1024 * GIB}
_SIZE_RE = re.compile(r"(\d+)([bkmgt]?)", re.IGNORECASE)
SIZE_HINT = "use bytes, or a number with b/k/m/g, like 512m or 1g"


def parse_size(value: Any) -> int:
    """
    Bytes from Docker's memory forms: an int, ``"1073741824"``, ``"512m"``, ``"1g"``,
    ``"1024k"``, ``"100b"`` (units are powers of 1024, case-insensitive).

    Stricter than Docker's own parser on purpose: ``"1gb"``, ``"1GiB"``, ``"1.5g"``,
    ``"-1"`` and ``""`` are refused, so one spelling means one thing across files.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{value!r} is not a size ({SIZE_HINT})")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value!r} is not a size ({SIZE_HINT})")
        return value
    match = _SIZE_RE.fullmatch(value)
    if not match:
        raise ValueError(f"{value!r} is not a size ({SIZE_HINT})")
    number, unit = match.groups()
    return int(number) * _SIZE_UNITS[(unit or "b").lower()]


def docker_size(num_bytes: int) -> str:
    """Shortest Docker/compose spelling: 1073741824 -> '1g', 536870912 -> '512m'."""
    for suffix, unit in (("g", GIB), ("m", MIB), ("k", KIB)):
        if num_bytes and num_bytes % unit == 0:
            return f"{num_bytes // unit}{suffix}"
    return str(num_bytes)


def human_size(num_bytes: int) -> str:
    """For plans and tables: '1 GiB', '420 MiB', '1.5 GiB', 'unlimited' for 0."""
    if not num_bytes:
        return "unlimited"
    for name, unit in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if num_bytes >= unit:
            value = num_bytes / unit
            text = f"{value:.0f}" if num_bytes % unit == 0 else f"{value:.1f}"
            return f"{text} {name}"
    return f"{num_bytes} B"
