"""Files on the controller that may hold something sensitive (reports: evidence, query texts,
host names): written 0600 whatever the umask, through a fresh temp file renamed into place, so
no reader ever sees a partial or a world-readable one; a folder made for them is 0700."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_private_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` (``~`` expanded) with mode 0600; returns the path written."""
    target = Path(path).expanduser()
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
