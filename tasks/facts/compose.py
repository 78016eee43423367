"""Compose facts: the host's compose tool, a compose file's text and the containers compose made
for one of its services, in one remote command (each fact read is a round trip).

Read-only. The file's text comes back base64-encoded, so the operation sees it byte for byte
(trailing blank lines and a missing final newline included) and a patch can be exact.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
import shlex
from dataclasses import dataclass

from pyinfra.api import FactBase

MARK = "### quantlab-compose "
# The labels compose (v1 and v2) puts on every container it creates.
PROJECT = "com.docker.compose.project"
SERVICE = "com.docker.compose.service"
CONFIG_FILES = "com.docker.compose.project.config_files"
WORKING_DIR = "com.docker.compose.project.working_dir"
CONFIG_HASH = "com.docker.compose.config-hash"
_FIELDS = (PROJECT, CONFIG_FILES, WORKING_DIR, CONFIG_HASH)


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
    "containers": [ComposeContainer, ...]}`` for compose file ``path`` and service ``service``:
    ``text`` is None when the file does not exist; ``containers`` are every container labelled
    with that service name (any project: the caller picks those made from ``path``).
    """

    def requires_command(self, *args, **kwargs) -> str:
        return "docker"

    def command(self, path, service):
        row = "\t".join(["{{.Names}}", *(f'{{{{.Label "{label}"}}}}' for label in _FIELDS)])
        q_path = shlex.quote(path)
        return (
            f"if docker compose version >/dev/null 2>&1; then echo '{MARK}tool docker compose'; "
            f"elif command -v docker-compose >/dev/null 2>&1; then echo '{MARK}tool docker-compose'; "
            f"else echo '{MARK}tool'; fi; "
            f"echo '{MARK}containers'; "
            f"docker ps -a --no-trunc --filter {shlex.quote(f'label={SERVICE}={service}')} "
            f"--format {shlex.quote(row)} || exit 1; "
            f"if [ -f {q_path} ]; then echo '{MARK}file'; base64 < {q_path} | tr -d '\\n' || exit 1; echo; "
            f"else echo '{MARK}missing'; fi"
        )

    def process(self, output):
        tool: list[str] | None = None
        containers: list[ComposeContainer] = []
        text: str | None = None
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
                try:
                    text = base64.b64decode(line.strip(), validate=True).decode()
                except (binascii.Error, UnicodeDecodeError) as exc:
                    raise ValueError(f"the compose file is not UTF-8 text ({exc})") from exc
        if section == "file" and text is None:
            text = ""  # an empty file: base64 printed nothing
        return {"tool": tool, "text": text, "containers": containers}
