"""Names as their targets define them, pure: what Docker, compose and the host accept.

Settings check every name against these rules before anything runs (tasks/settings/types.py),
so a name reaches a command line, a file or the engine only when the target itself would take
it: never as an option (``--privileged`` is no image), never with a quote, space or control
character. PostgreSQL identifiers follow :func:`tasks.core.pg_sql.quote_ident` (any text up to
63 bytes, no NUL: they are always quoted).

- container names: Docker's own pattern ``[a-zA-Z0-9][a-zA-Z0-9_.-]+`` (two characters at least);
- network names: the same characters, one at least (``bridge``, ``host`` and compose's
  ``<project>_default`` included);
- image references: the distribution reference grammar Docker parses (``[host[:port]/]path
  [:tag][@digest]``, lower-case path components, at most 255 characters for the name; the
  first component is a registry host only with a '.' or ':' or as ``localhost``, as the
  engine here (20.10) reads it; bracketed IPv6 hosts, which it refuses, are refused);
- compose service names: compose's ``[a-zA-Z0-9._-]+``, not starting with ``-`` or ``.``;
  compose project names: ``[a-z0-9][a-z0-9_-]*``;
- S3 bucket names: 3-63 lower-case letters, digits, '.' and '-' (the S3 rule MinIO keeps), so a
  bucket is one URL path segment;
- host paths: absolute, no control character, no ``..`` component (a path that says where it
  goes), at most 4096 bytes.
"""

from __future__ import annotations

import re

from tasks.core.quoting import control_char

CONTAINER_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
NETWORK_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
COMPOSE_SERVICE_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._-]*")
COMPOSE_PROJECT_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
S3_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
MAX_NAME = 255  # Docker: a container name, an image's name part
MAX_PATH = 4096  # PATH_MAX

# github.com/distribution/reference, regexp.go (Go's \w is ASCII).
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
IMAGE_REFERENCE_RE = re.compile(
    rf"(?P<name>(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?"
)
# The same for JSON Schema (ECMA regex: no named groups).
IMAGE_REFERENCE_PATTERN = re.sub(r"\?P<\w+>", "", IMAGE_REFERENCE_RE.pattern)
IMAGE_HINT = "[registry[:port]/]name[:tag][@digest], lower-case name"


def container_name_problem(name: str) -> str | None:
    """Why Docker would refuse ``name`` for a container, or None."""
    if not CONTAINER_NAME_RE.fullmatch(name):
        return (
            f"{name!r} is not a Docker container name ([a-zA-Z0-9][a-zA-Z0-9_.-]+, two characters at least)"
        )
    if len(name) > MAX_NAME:
        return f"a Docker container name is at most {MAX_NAME} characters"
    return None


def network_name_problem(name: str) -> str | None:
    if not NETWORK_NAME_RE.fullmatch(name) or len(name) > MAX_NAME:
        return f"{name!r} is not a Docker network name (letters, digits, _ . -; not starting with _ . -)"
    return None


def image_reference_problem(reference: str) -> str | None:
    """Why ``reference`` is not an image reference Docker parses, or None."""
    match = IMAGE_REFERENCE_RE.fullmatch(reference)
    if not match:
        hint = " (upper-case letters are not allowed in the name)" if reference.lower() != reference else ""
        return f"{reference!r} is not an image reference ({IMAGE_HINT}){hint}"
    first, slash, _ = match["name"].partition("/")
    if slash and not ("." in first or ":" in first or first == "localhost") and first.lower() != first:
        # Not a registry host (Docker looks for '.', ':' or localhost): a path component.
        return f"{reference!r} is not an image reference ({IMAGE_HINT}) (upper-case letters are not allowed in the name)"
    if len(match["name"]) > MAX_NAME:
        return f"an image name is at most {MAX_NAME} characters"
    return None


def compose_service_problem(name: str) -> str | None:
    if not COMPOSE_SERVICE_RE.fullmatch(name) or len(name) > MAX_NAME:
        return f"{name!r} is not a compose service name (letters, digits, . _ -; not starting with . _ -)"
    return None


def compose_project_problem(name: str) -> str | None:
    if not COMPOSE_PROJECT_RE.fullmatch(name) or len(name) > MAX_NAME:
        return f"{name!r} is not a compose project name (lower-case letters, digits, _ -)"
    return None


def s3_bucket_problem(name: str) -> str | None:
    if not S3_BUCKET_RE.fullmatch(name) or ".." in name:
        return f"{name!r} is not an S3 bucket name (3-63 lower-case letters, digits, '.', '-')"
    return None


def host_path_problem(path: str) -> str | None:
    """Why ``path`` is not an absolute host path fit for a command or a file, or None."""
    bad = control_char(path)
    if bad:
        return f"contains a control character ({bad})"
    if not path.startswith("/"):
        return "must be an absolute path"
    if ".." in path.split("/"):
        return "must not contain a '..' component"
    if len(path.encode("utf-8")) > MAX_PATH:
        return f"is longer than {MAX_PATH} bytes"
    return None
