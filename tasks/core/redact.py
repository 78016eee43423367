"""
What counts as a secret, and how facts keep secret values out of their own output.

One rule for every settings block and every fact:

- a **name** looks secret (``looks_secret``): PGPASSWORD, AWS_SECRET_ACCESS_KEY, API_TOKEN,
  DATABASE_URL, ... (``SECRET_NAME_ERE``, ASCII, case-insensitive);
- a **value** looks like a credential (``credential_problem``): a URL with a password
  (``scheme://user:pw@host``) or a PEM private key.

Facts redact at the source. pyinfra prints a fact command's raw output at ``-vvv``/``--debug``
and when the fact fails, so a secret the remote command prints is out before ``process()`` runs.
The container fact (tasks/facts/docker.py) therefore filters ``docker inspect`` on the host with
``INSPECT_AWK`` (POSIX awk: mawk, gawk, busybox): an env entry whose name looks secret, whose key
the caller names as a secret, or whose value looks like a credential comes back as
``KEY=***sha256:<hex>``, the SHA-256 of ``salt + hex(KEY=VALUE)`` (``env_digest``), computed on
the host; the password of every URL anywhere else in the document (command, labels,
healthcheck...) comes back as ``***``. The controller compares desired values with those digests
(``same_env_value``), so drift is still found without the value ever leaving the host.
``redact_inspect`` is the same filter in Python: the ops tests replay recorded documents through
it, and an integration test holds it equal to the host's output.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

# Names whose values must come from a SecretSource, never from inventory text. One rule for
# every block (env keys, job variables, compose environment) and for the facts' filter on the
# host, so it is written as a POSIX ERE over the upper-cased name (awk has no lookahead):
#   ACCESS_KEY but not ACCESS_KEY_ID (an S3 access key id is the public half of the pair);
#   KEY as a word, but not KEY_ID.
SECRET_NAME_ERE = (
    "PASSWORD|PASSWD|SECRET|TOKEN|PRIVATE_KEY|CREDENTIAL|API_?KEY"
    "|ACCESS_KEY($|[^_]|_$|_[^I]|_I$|_I[^D])"
    "|(^|_)DSN$|DATABASE_URL|(^|_)PASS(_|$)"
    "|(^|_)KEY($|_$|_[^I]|_I$|_I[^D]|_ID.)"
)
SECRET_NAME_RE = re.compile(SECRET_NAME_ERE, re.ASCII)

# `://user:password@` inside one JSON string (escapes kept), as POSIX ERE and Python regex alike:
# the user part stops at / @ " \ ; the password part runs to the last @ of the string.
CREDENTIAL_URL_ERE = r':\/\/[^"\/@\\]*:([^"\\]|\\.)*@'
_CREDENTIAL_URL_RE = re.compile(CREDENTIAL_URL_ERE)
PRIVATE_KEY_MARK = "PRIVATE KEY-----"

MASK = "***"
REDACTED = "***sha256:"  # an env value the fact digested: REDACTED + 64 hex digits
_REDACTED_RE = re.compile(re.escape(REDACTED) + "[0-9a-f]{64}")


_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def looks_secret(name: str) -> bool:
    """True for names like PGPASSWORD, AWS_SECRET_ACCESS_KEY, API_TOKEN, DATABASE_URL (ASCII
    letters in any case, as awk's toupper sees them)."""
    return bool(SECRET_NAME_RE.search(name.translate(_ASCII_UPPER)))


def credential_problem(value: str) -> str | None:
    """Why ``value`` looks like a credential (a URL with a password, a private key), else None.
    The answer never quotes the value."""
    if PRIVATE_KEY_MARK in value:
        return "holds a private key"
    if "://" in value:
        if _CREDENTIAL_URL_RE.search(go_json_string(value)):
            return "holds a URL with a password (scheme://user:password@host)"
        try:
            if urlsplit(value.strip()).password is not None:
                return "holds a URL with a password (scheme://user:password@host)"
        except ValueError:
            pass
    return None


class SecretValues(dict):
    """Secret values read on the controller (``{name: value}``), shown as ``***`` wherever they
    are printed: pyinfra names an operation called without ``name=`` by ``str()`` of its
    arguments, and a FunctionCommand's repr holds its arguments."""

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{key!r}: {MASK!r}" for key in self) + "}"

    __str__ = __repr__


# -- digests --------------------------------------------------------------------------------------


def env_digest(salt: str, entry: str) -> str:
    """SHA-256 (hex) of ``salt`` followed by the hex of the entry's UTF-8 bytes (``KEY=VALUE``):
    what the host computes from Go's ``printf "%x"`` of the entry."""
    return hashlib.sha256((salt + entry.encode().hex()).encode()).hexdigest()


def redacted_value(salt: str, key: str, value: str) -> str:
    return REDACTED + env_digest(salt, f"{key}={value}")


def is_redacted(value: str | None) -> bool:
    return value is not None and bool(_REDACTED_RE.fullmatch(value))


def same_env_value(salt: str, key: str, actual: str | None, desired: str | None) -> bool:
    """Whether an env value read from a fact (maybe a digest) is the desired one (maybe a digest
    too, when the desired spec was made from a fact). Constant-time on digests and secrets."""
    if actual is None or desired is None:
        return actual is desired
    if is_redacted(actual) and not is_redacted(desired):
        desired = redacted_value(salt, key, desired)
    elif is_redacted(desired) and not is_redacted(actual):
        actual = redacted_value(salt, key, actual)
    return hmac.compare_digest(actual.encode(), desired.encode())


# -- the filter, in Python (what the host's awk does) ---------------------------------------------


def go_json_string(text: str) -> str:
    """``text`` as Go's encoder writes it in ``docker inspect --format '{{json .}}'`` (HTML
    escaping off): quotes, backslash, control characters, U+2028/U+2029 escaped."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or code in (0x2028, 0x2029):
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _mask_json_text(text: str) -> str:
    def hide(match: re.Match[str]) -> str:
        rest = match.group(0)[3:]
        return "://" + rest[: rest.index(":") + 1] + MASK + "@"

    return _CREDENTIAL_URL_RE.sub(hide, text)


def mask_urls(text: str) -> str:
    """``text`` with every URL password replaced by ``***``, as the host's filter masks them."""
    if "://" not in text:
        return text
    return json.loads(_mask_json_text(go_json_string(text)))


def secret_entry(entry: str, secret_keys: Iterable[str] = ()) -> bool:
    """Whether the host's filter digests this env entry (decided on its JSON text, as awk does)."""
    text = go_json_string(entry)[1:-1]
    key, eq, value = text.partition("=")
    return bool(
        "\\" in key
        or looks_secret(key)
        or key in set(secret_keys)
        or (eq and (_CREDENTIAL_URL_RE.search(value) or PRIVATE_KEY_MARK in value))
    )


def redact_env(entries: Iterable[str] | None, salt: str, secret_keys: Iterable[str] = ()) -> list[str]:
    keys = set(secret_keys)
    out = []
    for entry in entries or []:
        if secret_entry(entry, keys):
            key = entry.partition("=")[0]
            out.append(key + "=" + REDACTED + env_digest(salt, entry))
        else:
            out.append(entry)
    return out


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask_urls(value)
    if isinstance(value, list):
        return [_masked(item) for item in value]
    if isinstance(value, dict):
        return {
            mask_urls(key): None if key == "Env" and isinstance(item, list) else _masked(item)
            for key, item in value.items()
        }
    return value


def redact_inspect(data: Mapping[str, Any], salt: str, secret_keys: Iterable[str] = ()) -> dict:
    """One ``docker inspect`` object as the container fact returns it: ``Config.Env`` entries
    digested where secret, every other env list dropped, URL passwords masked everywhere."""
    env = list((data.get("Config") or {}).get("Env") or [])
    out = _masked(copy.deepcopy(dict(data)))
    if isinstance(out.get("Config"), dict):
        out["Config"]["Env"] = redact_env(env, salt, secret_keys)
    return out


# -- the filter on the host -----------------------------------------------------------------------

# Input lines (from the templates in tasks/facts/docker.py): `O <object JSON>`, `E <entry JSON>
# <TAB> <entry hex>`, section marks `### ...`, error lines `ERR ...`. Output: `O` with every env
# list null and URL passwords masked; `E` for an entry shown as is; `S <hex> <key JSON text>` for
# one to digest (the shell after it hashes salt+hex); any other line becomes an error line
# without its text. `keys` holds the known secret keys, blank-separated and blank-framed.
INSPECT_AWK = (
    """function masked(s,   out, m, i) {
  out = ""
  while (match(s, /"""
    + CREDENTIAL_URL_ERE
    + """/)) {
    m = substr(s, RSTART + 3, RLENGTH - 3)
    i = index(m, ":")
    out = out substr(s, 1, RSTART + 2) substr(m, 1, i) "***@"
    s = substr(s, RSTART + RLENGTH)
  }
  return out s
}
/^### / || /^ERR / { print; next }
/^O / {
  s = substr($0, 3)
  gsub(/"Env":\\[("([^"\\\\]|\\\\.)*",?)*\\]/, "\\"Env\\":null", s)
  if (index(s, "\\"Env\\":[")) { print "ERR an env list could not be read safely"; next }
  print "O " masked(s)
  next
}
/^E / {
  t = index($0, "\\t")
  if (t == 0) { print "ERR docker inspect printed an unexpected line"; next }
  j = substr($0, 3, t - 3); x = substr($0, t + 1)
  q = index(j, "=")
  if (q) { k = substr(j, 2, q - 2); v = substr(j, q + 1, length(j) - q - 1) }
  else { k = substr(j, 2, length(j) - 2); v = "" }
  if (index(k, "\\\\") || toupper(k) ~ /"""
    + SECRET_NAME_ERE
    + """/ || index(keys, " " k " ") || (q && (v ~ /"""
    + CREDENTIAL_URL_ERE
    + """/ || index(v, \""""
    + PRIVATE_KEY_MARK
    + """\")))) print "S " x " " k
  else print "E " j
  next
}
/./ { print "ERR docker inspect printed an unexpected line" }
"""
)


# Log lines read into facts and reports (docker logs): every URL password masked on the host.
MASK_LINES_AWK = INSPECT_AWK.split("/^### / || /^ERR /")[0] + "{ print masked($0) }\n"


def mask_line(line: str) -> str:
    """MASK_LINES_AWK in Python: ``line`` (raw text) with every URL password masked."""
    return _mask_json_text(line)


# -- files the deploys read and rewrite (compose files, Dockerfiles) -------------------------------

# A name that points at a secret rather than holding one (POSTGRES_PASSWORD_FILE: /run/secrets/db).
_POINTER_NAME_ERE = "_(FILE|PATH)$"
_POINTER_NAME_RE = re.compile(_POINTER_NAME_ERE)
# A value that is not there (YAML null, empty) or not literal (interpolated: ${VAR}, $VAR).
_NOT_LITERAL = ("", "null", "~", "Null", "NULL")

# Lines of a text file that hold a literal secret, each reported as `line N: why` (never the
# value): a private key (BEGIN line to END line), a URL with a literal password (not `${...}`),
# and `NAME: value` / `- NAME=value` / `ENV NAME=value` / `ARG NAME=value` / `export NAME=value`
# with a secret-looking NAME and a literal value. Prints nothing for a clean file.
TEXT_AWK = (
    """function hit(why) { print "line " NR ": " why }
{
  line = $0
  if (pem) { if (index(line, "PRIVATE KEY-----")) pem = 0; next }
  if (index(line, "PRIVATE KEY-----")) {
    hit("a private key")
    b = index(line, "BEGIN")
    if (b && !index(substr(line, b), "END")) pem = 1
    next
  }
  s = line
  while (match(s, /"""
    + CREDENTIAL_URL_ERE
    + """/)) {
    m = substr(s, RSTART + 3, RLENGTH - 3)
    if (substr(m, index(m, ":") + 1, 1) != "$") { hit("a URL with a password"); break }
    s = substr(s, RSTART + RLENGTH)
  }
  s = line
  sub(/^[ \\t]*/, "", s); sub(/^-[ \\t]+/, "", s); sub(/^(ENV|ARG|export)[ \\t]+/, "", s); sub(/^["']/, "", s)
  if (match(s, /^[A-Za-z_][A-Za-z0-9_]*/)) {
    k = substr(s, 1, RLENGTH); v = substr(s, RLENGTH + 1); sub(/^["']?[ \\t]*/, "", v)
    c = substr(v, 1, 1)
    if (c == ":" || c == "=") {
      v = substr(v, 2); sub(/^[ \\t]*/, "", v); sub(/[ \\t]+#.*$/, "", v); sub(/[ \\t]*$/, "", v)
      sub(/^["']/, "", v); sub(/["']$/, "", v)
      u = toupper(k)
      if (v != "" && v != "null" && v != "~" && v != "Null" && v != "NULL" && substr(v, 1, 1) != "$" \\
          && u ~ /"""
    + SECRET_NAME_ERE
    + """/ && u !~ /"""
    + _POINTER_NAME_ERE
    + """/) hit(k " holds a literal value")
    }
  }
}
"""
)


def text_secret_lines(text: str) -> list[str]:
    """TEXT_AWK in Python: ``line N: why`` for each line of ``text`` holding a literal secret."""
    found: list[str] = []
    pem = False
    for number, line in enumerate(text.split("\n")[: -1 if text.endswith("\n") else None], 1):
        if pem:
            pem = PRIVATE_KEY_MARK not in line
            continue
        if PRIVATE_KEY_MARK in line:
            found.append(f"line {number}: a private key")
            begin = line.find("BEGIN")
            pem = begin >= 0 and "END" not in line[begin:]
            continue
        rest = line
        while match := _CREDENTIAL_URL_RE.search(rest):
            part = match.group(0)[3:]
            if part[part.index(":") + 1 : part.index(":") + 2] != "$":
                found.append(f"line {number}: a URL with a password")
                break
            rest = rest[match.end() :]
        s = re.sub(r"^[ \t]*", "", line)
        s = re.sub(r"^-[ \t]+", "", s)
        s = re.sub(r"^(ENV|ARG|export)[ \t]+", "", s)
        s = re.sub(r"^[\"']", "", s)
        name = re.match(r"[A-Za-z_][A-Za-z0-9_]*", s)
        if not name:
            continue
        value = re.sub(r"^[\"']?[ \t]*", "", s[name.end() :])
        if value[:1] not in (":", "="):
            continue
        value = re.sub(r"[ \t]*$", "", re.sub(r"[ \t]+#.*$", "", value[1:].lstrip(" \t")))
        value = re.sub(r"[\"']$", "", re.sub(r"^[\"']", "", value))
        key = name.group(0)
        pointer = _POINTER_NAME_RE.search(key.translate(_ASCII_UPPER))
        if value not in _NOT_LITERAL and not value.startswith("$") and looks_secret(key) and not pointer:
            found.append(f"line {number}: {key} holds a literal value")
    return found
