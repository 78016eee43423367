"""SCRAM-SHA-256 password verifiers, computed exactly as PostgreSQL does.

Why: sending a verifier instead of the password keeps the plaintext on the controller (secrets
never leave it in clear), and recomputing a verifier with the stored salt answers "is the password already
right?" without changing it, so a second run reports no change.

Format (PostgreSQL ``rolpassword``)::

    SCRAM-SHA-256$<iterations>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>

Password preparation follows PostgreSQL's ``pg_saslprep`` (src/common/saslprep.c), including its
fallback: a pure-ASCII password is used as is; otherwise SASLprep (RFC 4013) is applied and, if the
password is not valid UTF-8 or SASLprep rejects it (prohibited, unassigned or bidi-invalid
characters, or nothing left after mapping), PostgreSQL silently uses the raw bytes. The RFC 3454
tables come from Python's ``stringprep`` module; NFKC from ``unicodedata`` (the Unicode versions of
Python and the server may differ for code points assigned after Unicode 3.2 - those are prohibited
as unassigned anyway, so both sides fall back to the raw bytes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import stringprep
import unicodedata
from dataclasses import dataclass
from typing import Literal

SCRAM_PREFIX = "SCRAM-SHA-256"
DEFAULT_ITERATIONS = 4096  # PostgreSQL's scram_iterations default
SALT_LEN = 16  # PostgreSQL's SCRAM_DEFAULT_SALT_LEN
MAX_PASSWORD_BYTES = 1024  # PostgreSQL refuses longer passwords ("password too long")

_MD5_RE = re.compile(r"md5[0-9a-f]{32}\Z")

PasswordStatus = Literal["match", "mismatch", "md5-match-upgrade", "absent"]


@dataclass(frozen=True)
class ScramVerifier:
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes

    def __repr__(self) -> str:  # keys are password-equivalent for offline guessing: keep out of logs
        return f"ScramVerifier(iterations={self.iterations}, salt=<{len(self.salt)} bytes>, keys=<hidden>)"

    def __str__(self) -> str:
        b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
        return (
            f"{SCRAM_PREFIX}${self.iterations}:{b64(self.salt)}${b64(self.stored_key)}:{b64(self.server_key)}"
        )


def _password_bytes(password: str | bytes) -> bytes:
    raw = password.encode("utf-8") if isinstance(password, str) else bytes(password)
    if not raw:
        raise ValueError("empty password: PostgreSQL treats it as 'no password'")
    if b"\x00" in raw:
        raise ValueError("password contains a NUL byte, which PostgreSQL cannot store")
    if len(raw) > MAX_PASSWORD_BYTES:
        raise ValueError(f"password longer than {MAX_PASSWORD_BYTES} bytes: PostgreSQL rejects it")
    return raw


def _prohibited(ch: str) -> bool:
    # RFC 4013 section 2.3 (C.1.2, C.2.1, C.2.2, C.3-C.9) plus unassigned code points (A.1).
    return (
        stringprep.in_table_c12(ch)
        or stringprep.in_table_c21_c22(ch)
        or stringprep.in_table_c3(ch)
        or stringprep.in_table_c4(ch)
        or stringprep.in_table_c5(ch)
        or stringprep.in_table_c6(ch)
        or stringprep.in_table_c7(ch)
        or stringprep.in_table_c8(ch)
        or stringprep.in_table_c9(ch)
        or stringprep.in_table_a1(ch)
    )


def pg_saslprep(raw: bytes) -> bytes:
    """Return the bytes PostgreSQL feeds to PBKDF2 for this password (see module docstring)."""
    if raw.isascii():
        return raw  # PostgreSQL skips SASLprep entirely for pure ASCII (even control chars)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw
    mapped = []
    for ch in text:
        if stringprep.in_table_c12(ch):  # non-ASCII space -> SPACE
            mapped.append(" ")
        elif not stringprep.in_table_b1(ch):  # B.1: commonly mapped to nothing
            mapped.append(ch)
    if not mapped:
        return raw
    prepared = unicodedata.normalize("NFKC", "".join(mapped))
    if any(_prohibited(ch) for ch in prepared):
        return raw
    if any(stringprep.in_table_d1(ch) for ch in prepared):  # RFC 3454 section 6 bidi rule
        if any(stringprep.in_table_d2(ch) for ch in prepared):
            return raw
        if not (stringprep.in_table_d1(prepared[0]) and stringprep.in_table_d1(prepared[-1])):
            return raw
    return prepared.encode("utf-8")


def _keys(password: str | bytes, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    salted = hashlib.pbkdf2_hmac("sha256", pg_saslprep(_password_bytes(password)), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    return stored_key, server_key


def scram_verifier(
    password: str | bytes, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> str:
    """The PostgreSQL SCRAM-SHA-256 verifier for ``password`` (random 16-byte salt by default)."""
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    salt = os.urandom(SALT_LEN) if salt is None else salt
    if not salt:
        raise ValueError("salt must not be empty")
    stored_key, server_key = _keys(password, salt, iterations)
    return str(ScramVerifier(iterations, salt, stored_key, server_key))


def parse_scram_verifier(stored: str) -> ScramVerifier | None:
    """Parse a stored verifier; None if it is not a well-formed SCRAM-SHA-256 verifier."""
    m = re.fullmatch(r"SCRAM-SHA-256\$(\d+):([^$:]+)\$([^$:]+):([^$:]+)", stored or "")
    if not m:
        return None
    try:
        salt, stored_key, server_key = (base64.b64decode(part, validate=True) for part in m.group(2, 3, 4))
    except (binascii.Error, ValueError):
        return None
    iterations = int(m.group(1))
    if iterations < 1 or not salt or len(stored_key) != 32 or len(server_key) != 32:
        return None
    return ScramVerifier(iterations, salt, stored_key, server_key)


def is_scram_verifier(value: str) -> bool:
    return parse_scram_verifier(value) is not None


def verifier_matches(stored: str | None, password: str | bytes) -> bool:
    """True when the stored SCRAM verifier was made from ``password`` (salt/iterations reused)."""
    parsed = parse_scram_verifier(stored or "")
    if parsed is None:
        return False
    stored_key, server_key = _keys(password, parsed.salt, parsed.iterations)
    # Compare both keys in constant time; `&` (not `and`) so both comparisons always run.
    return hmac.compare_digest(stored_key, parsed.stored_key) & hmac.compare_digest(
        server_key, parsed.server_key
    )


def md5_verifier(password: str | bytes, username: str) -> str:
    """PostgreSQL's legacy ``md5`` + hex(md5(password || username)) (no SASLprep)."""
    raw = _password_bytes(password)
    digest = hashlib.md5(raw + username.encode("utf-8"), usedforsecurity=False).hexdigest()
    return "md5" + digest


def password_status(stored: str | None, password: str | bytes, username: str) -> PasswordStatus:
    """Compare what ``pg_authid.rolpassword`` holds with the desired password.

    - ``absent``: no password stored (NULL/empty).
    - ``match``: a SCRAM verifier of this password: nothing to do.
    - ``md5-match-upgrade``: an md5 hash of this password: re-set it as SCRAM.
    - ``mismatch``: anything else (another password, or a format we cannot check).
    """
    if not stored:
        return "absent"
    if parse_scram_verifier(stored) is not None:
        return "match" if verifier_matches(stored, password) else "mismatch"
    if _MD5_RE.match(stored):
        same = hmac.compare_digest(md5_verifier(password, username), stored)
        return "md5-match-upgrade" if same else "mismatch"
    return "mismatch"
