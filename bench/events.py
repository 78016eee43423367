"""Times of what happened in a container, parsed (pure): the lines of `docker logs --timestamps`
that contain a marker (gunicorn's SIGKILL line). The memory plot marks them on its time axis."""
from __future__ import annotations

import datetime as dt


def rfc3339_epoch(stamp: str) -> float:
    """`2026-12-02T04:01:02.123456789Z` (Docker's RFC 3339 with nanoseconds) -> epoch seconds."""
    stamp = stamp.strip()
    zone = "+00:00"
    if stamp.endswith("Z"):
        stamp = stamp[:-1]
    elif len(stamp) > 6 and stamp[-6] in "+-" and stamp[-3] == ":":
        stamp, zone = stamp[:-6], stamp[-6:]
    whole, _, fraction = stamp.partition(".")
    base = dt.datetime.fromisoformat(whole + zone).timestamp()
    return base + (float("0." + fraction) if fraction.isdigit() else 0.0)


def log_times(text: str, marker: str) -> list[float]:
    """Epoch seconds of the `docker logs --timestamps` lines that contain `marker`."""
    out = []
    for line in text.splitlines():
        stamp, _, rest = line.partition(" ")
        if marker in rest:
            try:
                out.append(rfc3339_epoch(stamp))
            except ValueError:
                continue
    return out
