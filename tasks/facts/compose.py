"""Compose facts: the host's compose tool, a compose file's text and the containers compose made
for one of its services, in one remote command (each fact read is a round trip).

Read-only. The file's text comes back base64-encoded, so the operation sees it byte for byte
(trailing blank lines and a missing final newline included) and a patch can be exact. A file with
a literal secret in it (a secret-named key with a value, a URL with a password, a private key:
tasks/core/redact.py's TEXT_AWK, run on the host) is not sent at all: pyinfra prints a fact's
output at -vvv, and base64 hides nothing. Only which lines, and why, come back; the operations
refuse such a file (keep secrets in an env_file or `${VAR}` from `.env`).
"""

from __future__ import annotations

import base64
import binascii
import posixpath
import shlex
from dataclasses import dataclass

from pyinfra.api import FactBase

from tasks.core.redact import TEXT_AWK

MARK = "### quantlab-compose "
# The labels compose (v1 and v2) puts on every container it creates.
PROJECT = "com.docker.compose.project"
SERVICE = "com.docker.compose.service"
CONFIG_FILES = "com.docker.compose.project.config_files"
WORKING_DIR = "com.docker.compose.project.working_dir"
CONFIG_HASH = "com.docker.compose.config-hash"
_FIELDS = (PROJECT, CONFIG_FILES, WORKING_DIR, CONFIG_HASH)


def filtered_text_command(path: str, mark: str) -> str:
    """Shell: ``<mark>file`` and the file's base64 on one line when no line holds a literal
    secret; ``<mark>secret`` and ``line N: why`` lines when one does (the text is not sent);
    ``<mark>missing`` when there is no such file."""
    q_path = shlex.quote(path)
    secret, file, missing = (shlex.quote(mark + word) for word in ("secret", "file", "missing"))
    return (
        f"if [ -f {q_path} ]; then hits=$(LC_ALL=C awk {shlex.quote(TEXT_AWK)} {q_path}) || exit 1; "
        f'if [ -n "$hits" ]; then echo {secret}; printf \'%s\\n\' "$hits"; '
        f"else echo {file}; base64 < {q_path} | tr -d '\\n' || exit 1; echo; fi; "
        f"else echo {missing}; fi"
    )


def _decode(line: str) -> str:
    try:
        return base64.b64decode(line.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ValueError(f"the file is not UTF-8 text ({exc})") from exc


@dataclass(frozen=True)
class ComposeContainer:
    name: str
    project: str
    config_files: tuple[str, ...]  # absolute paths
    working_dir: str
    config_hash: str  # set only on containers compose itself created

    def made_from(self, path: str) -> bool:
        return posixpath.normpath(path) in self.config_files


def _absolute(files: str, working_dir: str) -> tuple[str, ...]:
    # v1 records the -f paths as given (often relative to the project folder), v2 absolute ones.
    return tuple(
        posixpath.normpath(posixpath.join(working_dir or "/", item))
        for item in (part.strip() for part in files.split(","))
        if item
    )


class ComposeService(FactBase):
    """
    ``{"tool": ["docker", "compose"] | ["docker-compose"] | None, "text": str | None,
    "secret_lines": [str, ...], "containers": [ComposeContainer, ...]}`` for compose file ``path``
    and service ``service``: ``text`` is None when the file does not exist, or when lines hold a
    literal secret (``secret_lines`` says which, never the value); ``containers`` are every
    container labelled with that service name (any project: the caller picks those made from
    ``path``).
    """

    def requires_command(self, *args, **kwargs) -> str:
        return "docker"

    def command(self, path, service):
        row = "\t".join(["{{.Names}}", *(f'{{{{.Label "{label}"}}}}' for label in _FIELDS)])
        return (
            f"if docker compose version >/dev/null 2>&1; then echo '{MARK}tool docker compose'; "
            f"elif command -v docker-compose >/dev/null 2>&1; then echo '{MARK}tool docker-compose'; "
            f"else echo '{MARK}tool'; fi; "
            f"echo '{MARK}containers'; "
            f"docker ps -a --no-trunc --filter {shlex.quote(f'label={SERVICE}={service}')} "
            f"--format {shlex.quote(row)} || exit 1; " + filtered_text_command(path, MARK)
        )

    def process(self, output):
        tool: list[str] | None = None
        containers: list[ComposeContainer] = []
        text: str | None = None
        secret_lines: list[str] = []
        section = None
        for line in output:
            if line.startswith(MARK):
                section, _, rest = line[len(MARK) :].partition(" ")
                if section == "tool":
                    tool = rest.split() or None
                continue
            if section == "containers" and line.strip():
                name, project, files, working_dir, config_hash = (line.split("\t") + [""] * 5)[:5]
                containers.append(
                    ComposeContainer(name, project, _absolute(files, working_dir), working_dir, config_hash)
                )
            elif section == "file":
                text = _decode(line)
            elif section == "secret" and line.strip():
                secret_lines.append(line.strip())
        if section == "file" and text is None:
            text = ""  # an empty file: base64 printed nothing
        return {"tool": tool, "text": text, "secret_lines": secret_lines, "containers": containers}


TEXT_MARK = "### quantlab-text "


class ConfigText(FactBase):
    """
    A text file the deploys patch (a Dockerfile, a compose file), read through the same filter as
    ComposeService's: ``{"lines": [str, ...] | None, "secret_lines": [str, ...]}``; ``lines`` is
    None when the file does not exist or when lines hold a literal secret (then ``secret_lines``
    says which, never the value).
    """

    def command(self, path):
        return filtered_text_command(path, TEXT_MARK)

    def process(self, output):
        lines: list[str] | None = None
        secret_lines: list[str] = []
        section = None
        for line in output:
            if line.startswith(TEXT_MARK):
                section = line[len(TEXT_MARK) :].strip()
                lines = [] if section == "file" else None
            elif section == "file":
                lines = _decode(line).splitlines()
            elif section == "secret" and line.strip():
                secret_lines.append(line.strip())
        return {"lines": lines, "secret_lines": secret_lines}


# The copy of a compose file an apply keeps beside it until the change is verified or undone
# (tasks/operations/compose.py): its presence tells the next run that an apply did not finish.
PENDING_SUFFIX = ".quantlab-previous"
PENDING_MARK = "### quantlab-pending "


def pending_path(path: str) -> str:
    """``/srv/stack/docker-compose.yml`` -> ``/srv/stack/.docker-compose.yml.quantlab-previous``."""
    folder, base = posixpath.split(path)
    return posixpath.join(folder, f".{base}{PENDING_SUFFIX}")


class ComposePending(FactBase):
    """
    The copy of compose file ``path`` that an unfinished apply left (:func:`pending_path`), read
    through the same filter as ComposeService's: ``{"text": str | None, "secret_lines": [...]}``;
    ``text`` is None when there is no copy (the usual case) or when it holds a literal secret.
    """

    def command(self, path):
        return filtered_text_command(pending_path(path), PENDING_MARK)

    def process(self, output):
        text: str | None = None
        secret_lines: list[str] = []
        section = None
        for line in output:
            if line.startswith(PENDING_MARK):
                section = line[len(PENDING_MARK) :].strip()
            elif section == "file":
                text = _decode(line)
            elif section == "secret" and line.strip():
                secret_lines.append(line.strip())
        if section == "file" and text is None:
            text = ""
        return {"text": text, "secret_lines": secret_lines}
