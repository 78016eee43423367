"""Text files the deploys write on a host, through pyinfra's own file operation: ``files.put``
(its ``_inner``, from inside our operations), so ``--dry --diff`` shows pyinfra's unified diff
of each, and a run that changes nothing shows none.

- :func:`put_text` keeps what the file is (its mode, owner and group, read with pyinfra's
  ``File`` fact) unless the caller names them: a 0600 file stays 0600, whatever the upload did.
- :func:`show_diff` prints the same diff for a file written another way: uploaded under a staged
  name and validated before it is moved in place (sudoers), or written at execution time
  (a compose file applied with rollback).

Neither ever shows a secret: a text holding a literal one (a password-bearing URL, a secret-named
key with a literal value, a private key: tasks/core/redact.py's rules) is refused, never
uploaded and never diffed. The files the deploys read to patch are read through a host-side
filter that refuses such a file before (tasks/facts/compose.py ConfigText).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

from pyinfra import host, logger
from pyinfra.api import OperationError
from pyinfra.api.util import format_text
from pyinfra.facts.files import File
from pyinfra.operations import files
from pyinfra.operations.util.files import generate_color_diff

from tasks.core.redact import text_secret_lines


def refuse_secret_text(path: str, text: str) -> None:
    found = text_secret_lines(text)
    if found:
        raise OperationError(
            f"{path}: the text to write holds a literal secret ({'; '.join(found[:5])}): it would be "
            "shown by --diff and stored in clear; nothing was changed"
        )


def put_text(
    path: str,
    text: str,
    *,
    mode: int | str | None = None,
    user: str | None = None,
    group: str | None = None,
    create_remote_dir: bool = False,
) -> Iterator[Any]:
    """``files.put`` of ``text`` to ``path`` (yield from it inside an operation): nothing when the
    file already holds it with its mode and owner; else the upload, then ``chown``/``chmod`` to
    what the file had (or ``mode``/``user``/``group`` when given)."""
    refuse_secret_text(path, text)
    current = host.get_fact(File, path=path)
    if current:
        mode = current["mode"] if mode is None else mode
        user = user or current["user"]
        group = group or current["group"]
    yield from files.put._inner(
        src=io.BytesIO(text.encode()),
        dest=path,
        mode=mode,
        user=user,
        group=group,
        create_remote_dir=create_remote_dir,
    )


def diff_enabled() -> bool:
    config = getattr(getattr(host, "state", None), "config", None)
    return bool(getattr(config, "DIFF", False))


def show_diff(path: str, old_text: str | None, new_text: str) -> None:
    """With ``--diff``, print the change from ``old_text`` (None: the file does not exist) to
    ``new_text`` exactly as ``files.put`` prints its own."""
    if not diff_enabled() or old_text == new_text:
        return
    refuse_secret_text(path, new_text)
    verb = "create" if old_text is None else "modify"
    logger.info(f"{host.print_prefix}Will {verb} {format_text(path, bold=True)}")  # as host.log prints
    old_lines = [] if old_text is None else old_text.splitlines(keepends=True)
    for line in generate_color_diff(old_lines, new_text.splitlines(keepends=True)):
        logger.info("  %s", line)
    logger.info("")
