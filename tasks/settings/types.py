"""The shared setting types: sizes, durations, secret sources, what looks like a secret, and
names as their targets define them.

Each is declared once here and used by every block model, so `"1gb"` or `{"env": ""}` gets the
same one-line error whichever deploy reads it. The name types check a value against the rules of
what will read it (tasks/core/names.py, tasks/core/pg_sql.py): a Docker container, network or
image, a compose service or project, a PostgreSQL identifier, an absolute host path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

from tasks.core import names
from tasks.core.durations import DURATION_HINT, MAX_SECONDS, parse_duration
from tasks.core.pg_sql import MAX_IDENT_BYTES, quote_ident
from tasks.core.redact import credential_problem, looks_secret
from tasks.core.sizes import DOCKER_MIN_MEMORY, SIZE_HINT, parse_size

# Names whose values must come from a SecretSource, never from inventory text, and values that
# look like credentials: one rule for every block (env keys, job variables, compose environment)
# and for the facts' filter on the host (tasks/core/redact.py).
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def plaintext_problem(name: str, value: Any) -> str | None:
    """Why ``name=value`` must not be written where it would land in clear (a container's env
    or labels, a job script, a unit file), else None: a secret-looking name, or a value that
    looks like a credential (a URL with a password, a private key). Never quotes the value."""
    if looks_secret(name):
        return "looks like a secret"
    problem = credential_problem(value) if isinstance(value, str) else None
    return f"{problem}: a credential" if problem else None


# No size setting here means more than this; bigger is a typo (or an overflow waiting to happen).
MAX_SIZE = 1 << 50  # 1 PiB


def _size(value: Any) -> int:
    size = parse_size(value)
    if size > MAX_SIZE:
        raise ValueError(f"{value!r} is above the largest size taken here (1 PiB)")
    return size


def _memory(value: Any) -> int:
    size = _size(value)
    if size < DOCKER_MIN_MEMORY:
        raise ValueError(f"{value!r} is below Docker's minimum of 6m")
    return size


def _duration(value: Any) -> float:
    return parse_duration(value)


_SIZE_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": 0, "maximum": MAX_SIZE},
        {"type": "string", "pattern": r"^[0-9]+[bkmgtBKMGT]?$"},
    ],
    "description": SIZE_HINT,
}
_DURATION_SCHEMA = {
    "anyOf": [{"type": "number", "minimum": 0, "maximum": MAX_SECONDS}, {"type": "string"}],
    "description": DURATION_HINT,
}

# Bytes, from Docker's forms: 1073741824, "512m", "1g".
Size = Annotated[int, BeforeValidator(_size), WithJsonSchema(_SIZE_SCHEMA)]
# A container memory setting: a Size Docker accepts (at least 6m).
MemorySize = Annotated[int, BeforeValidator(_memory), WithJsonSchema(_SIZE_SCHEMA)]
# Seconds, from 90, "30s", "15m", "1 hour".
Duration = Annotated[float, BeforeValidator(_duration), WithJsonSchema(_DURATION_SCHEMA)]


def _rule(problem: Callable[[str], str | None]) -> AfterValidator:
    def check(value: str) -> str:
        found = problem(value)
        if found:
            raise ValueError(found)
        return value

    return AfterValidator(check)


def _pg_identifier(value: str) -> str:
    quote_ident(value)  # its SqlInputError (a ValueError) says why: empty, NUL, too long
    return value


def _schema(pattern: str, description: str) -> WithJsonSchema:
    return WithJsonSchema({"type": "string", "pattern": pattern, "description": description})


_NON_EMPTY = StringConstraints(min_length=1)

# A Docker container name, as the engine accepts it.
ContainerName = Annotated[
    str,
    _NON_EMPTY,
    _rule(names.container_name_problem),
    _schema(f"^{names.CONTAINER_NAME_RE.pattern}$", "a Docker container name"),
]
# A Docker network name.
NetworkName = Annotated[
    str,
    _NON_EMPTY,
    _rule(names.network_name_problem),
    _schema(f"^{names.NETWORK_NAME_RE.pattern}$", "a Docker network name"),
]
# An image reference Docker parses: never an option, never two words.
ImageRef = Annotated[
    str,
    _NON_EMPTY,
    _rule(names.image_reference_problem),
    _schema(f"^{names.IMAGE_REFERENCE_PATTERN}$", names.IMAGE_HINT),
]
ComposeService = Annotated[
    str,
    _NON_EMPTY,
    _rule(names.compose_service_problem),
    _schema(f"^{names.COMPOSE_SERVICE_RE.pattern}$", "a compose service name"),
]
ComposeProject = Annotated[
    str,
    _NON_EMPTY,
    _rule(names.compose_project_problem),
    _schema(f"^{names.COMPOSE_PROJECT_RE.pattern}$", "a compose project name"),
]
S3Bucket = Annotated[
    str,
    _NON_EMPTY,
    _rule(names.s3_bucket_problem),
    _schema(f"^{names.S3_BUCKET_RE.pattern}$", "an S3 bucket name"),
]
# An absolute path on the host: no control character, no '..' component.
HostPath = Annotated[
    str, _NON_EMPTY, _rule(names.host_path_problem), _schema("^/", "an absolute path on the host")
]
# A PostgreSQL role, database or schema name: any text up to 63 bytes, no NUL (always quoted).
PgIdentifier = Annotated[
    str,
    StringConstraints(min_length=1),
    AfterValidator(_pg_identifier),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "description": f"a PostgreSQL name (at most {MAX_IDENT_BYTES} bytes)",
        }
    ),
]


class SecretSource(BaseModel):
    """Where the controller reads a secret: ``{"env": "VAR"}`` or ``{"file": "/path"}``.

    The value itself never sits in host data. A file holds the secret alone: its content with
    one trailing newline dropped; an empty or multi-line value is refused. Errors name the
    variable or path, never a value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str | None = Field(default=None, description="environment variable on the controller")
    file: str | None = Field(default=None, description="file on the controller (~ allowed)")

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any) -> Any:
        # A bare string is most likely the secret itself pasted in: refuse without echoing it.
        if not isinstance(data, Mapping) or len(data) != 1 or next(iter(data)) not in ("env", "file"):
            raise ValueError('must be {"env": "VARIABLE"} or {"file": "/path/on/controller"}')
        ((kind, where),) = data.items()
        if not isinstance(where, str) or not where:
            raise ValueError(f'"{kind}" must name a variable or a file')
        if kind == "env" and not ENV_NAME_RE.match(where):
            raise ValueError(f"env {where!r} is not a variable name")
        if kind == "file" and ("\n" in where or "\0" in where):
            raise ValueError("file path spans lines")
        return data

    def describe(self) -> str:
        return f"environment variable {self.env}" if self.env else f"file {self.file}"

    def read(
        self, environ: Mapping[str, str] | None = None, read_file: Callable[[str], str] | None = None
    ) -> str:
        """The secret, read on the controller. Raises ValueError naming the source."""
        if self.env:
            value = (os.environ if environ is None else environ).get(self.env)
            if not value:
                raise ValueError(f"environment variable {self.env} is not set on the controller")
        else:
            assert self.file
            reader = read_file or (lambda path: Path(path).expanduser().read_text(encoding="utf-8"))
            try:
                value = reader(self.file)
            except OSError as exc:
                raise ValueError(f"cannot read {self.file}: {exc.strerror or exc}") from None
            value = value[:-2] if value.endswith("\r\n") else value[:-1] if value.endswith("\n") else value
            if not value:
                raise ValueError(f"file {self.file} is empty")
        if "\n" in value or "\r" in value or "\0" in value:
            raise ValueError(f"the value from {self.describe()} spans lines")
        return value
