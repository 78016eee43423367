"""SCRAM-SHA-256 verifiers against vectors produced by a real PostgreSQL 15.18 server.

Generated once with ``SET password_encryption = 'scram-sha-256'; CREATE ROLE <name> PASSWORD
'<password>'; SELECT rolname, rolpassword FROM pg_authid`` (md5 case with password_encryption =
'md5'). The non-ASCII cases pin PostgreSQL's SASLprep behaviour: prepared when SASLprep succeeds,
raw bytes when it fails.
"""

import base64
import re

import pytest

from tasks.core.scram import (
    md5_verifier,
    parse_scram_verifier,
    password_status,
    pg_saslprep,
    scram_verifier,
    verifier_matches,
)

# (role name, password, rolpassword from PostgreSQL 15.18, SASLprep changes the bytes?)
PG15_VECTORS = [
    ("v_ascii", "pencil",
     "SCRAM-SHA-256$4096:DSnQ52Z7abL24BqhGLjJtg==$CPNXmjosEcdM6gOAZYQy9wu7dfORx4dEQiFTNoHhNnM=:e2edLBqDQKIFEygTvE07wye5/jtJer1NqRezOINd0NQ=", False),
    ("v_quote", "O'Reilly $ecret\\n",
     "SCRAM-SHA-256$4096:QnpCZ0yZ+YrsSQjM8nUbAA==$UGQY6HVpFXhZtFLxDKDBR2bp8dzV0Wt7IxW799z8ggI=:/5d0qGW53bMtFdkcvPXMAWAq+RHUMMrH8rKLrY1g8P0=", False),
    ("v_rot", "Quant-Pa55:w\\rd",
     "SCRAM-SHA-256$4096:qBHPRP8sfiy3o/IL8NPVgQ==$ClEkUKUeMyZpszK9YNs/Y/K3bu7lZuS7OqYCyVzJLT4=:SGuEcbzaoaJnibRIr3qB14Iki+97HtU+Bx77bDweKQ0=", False),
    # pure ASCII skips SASLprep even with a control character
    ("v_ctl", "a\u0007b",
     "SCRAM-SHA-256$4096:LIKRPlP4k4QNmw8bgsnzLw==$3pTPt7NMsQZTg3lowkXq+1wajrh0F1GsaJuNw46FC54=:1fWTCqZYig3KurkDD1IC+WM9CY+un/88Sqf3kO5n600=", False),
    # NFKC: ligature fi and roman numeral nine
    ("v_nfkc", "\ufb01\u2168",
     "SCRAM-SHA-256$4096:EBzqrKFjogdMrDH4PgUxtg==$PrCYWl7WZ1FuFDmT1AumsRoIjn1B4nN6y6NcqHJHtZQ=:KnJei1cNUWAYi/VFlMVUbVagY+rW6eiOuqqEcYNwiJA=", True),
    # non-ASCII space mapped to SPACE
    ("v_nbsp", "a\u00a0b",
     "SCRAM-SHA-256$4096:8H2DKpb5pRk8e69a9KQD+A==$PeDsTegfk02bbQOIaNt4D0TvPTVykY4eDgcCItCW8RM=:iWrihKVYjWbObYqmwP2X5qEfGS57TUxiukC69dpMaCo=", True),
    # soft hyphen mapped to nothing
    ("v_map", "ab\u00adc",
     "SCRAM-SHA-256$4096:ca620sfKdhepDOTXxQsATQ==$R70Wqb0glJ85Jbc+29vkElsKgnV+3wsSl0d/ZGsFF+E=:nJJOl0RuvrjtlX84Wccvi6Esh9MtS8CeOcT5VXwuUqA=", True),
    # combining acute accent composed by NFKC
    ("v_comb", "e\u0301",
     "SCRAM-SHA-256$4096:ND2lSJ8+jLGal8uFoUA6Nw==$36R/VC+AE/crsKCTKPgnkqGyDPa7niluZE1IeszIBu0=:EB07pFuzVzBLqkmf2N+/e6Yrp3cLgzxbUUiBbhe+J68=", True),
    # SASLprep fails -> raw bytes, even though NFKC alone would change them:
    ("v_fb_c8", "\ufb01\u200e",  # C.8 left-to-right mark
     "SCRAM-SHA-256$4096:WtmR7g+rZ5xEOrTV8fumGg==$+Dt0Djvkvgdvn6DjSyFYtMbyO1ECHkuo2/2Jrcec3fc=:4qD5dkEoKwBo4mCVWk+hhl0tAHA8riyIfcyC4USJnBI=", False),
    ("v_fb_emoji", "\ufb01\U0001F600",  # unassigned in Unicode 3.2
     "SCRAM-SHA-256$4096:dTzo/Bls1p2Vo2WAwn5Chw==$b5iMDBB/GM/U2cDujUFR/BfuT3epLxbL4TFhoAZFhXY=:JKgY27N4rRNHOVAmJSC3OZDbxUp2V2OLennsy1r4Tjg=", False),
    ("v_fb_bidi", "\u05d0\ufb01",  # RandALCat mixed with LCat
     "SCRAM-SHA-256$4096:+RX6nUmd6358WqiaY0Of0Q==$wI1F3QyidHphl+ruQ7wu2EqMEtA8FhhMoiepp3qW/V8=:Uijy0omRaH3wnnZa84aD9OZQnuukz0X1bSURtkKB4FQ=", False),
    ("v_c8", "\u00e9\u200e",
     "SCRAM-SHA-256$4096:+S8O3ogQGBqKxryPyy+RNw==$rbRf8syORZ4O0dVudnqsYiKlWlX1jFGG+9Ymsq7QrKM=:i3/q/8mUZnHGBcEK8qhyOU2vJbmhUr/q5268aThycNg=", False),
    ("v_emoji", "x\U0001F600",
     "SCRAM-SHA-256$4096:TmG7JBdw48ZiOMYAGftOFQ==$coK4OyysPJ53D/W5oZnEhEJBAoFGrpYaEWuZBk6dXis=:2wdhGuNs7y4Lw+8KKZjNYWlhdzLijGXvARDUzKdJjx8=", False),
    ("v_bidi", "\u05d0a",
     "SCRAM-SHA-256$4096:knLZ0lAPswx2Cz1AWlhU4Q==$SQes6ilBheriIjlKhZnN+9bgHd4+SVkQ2uT4RpUR77g=:chixSaWQgehGGo6R2qZxOC1Qjhh67/0erPKZ//udIhE=", False),
]  # fmt: skip
PG15_MD5 = ("v_md5", "pencil", "md56ace4c74ccf565b86267ff9dd674c716")


@pytest.mark.parametrize("name,password,stored,prepared", PG15_VECTORS, ids=[v[0] for v in PG15_VECTORS])
def test_postgres_vectors_match(name, password, stored, prepared):
    assert verifier_matches(stored, password)
    assert password_status(stored, password, name) == "match"
    assert not verifier_matches(stored, password + "x")
    assert password_status(stored, password + "x", name) == "mismatch"
    raw = password.encode("utf-8")
    assert (pg_saslprep(raw) != raw) is prepared


@pytest.mark.parametrize("name,password,stored,prepared", PG15_VECTORS, ids=[v[0] for v in PG15_VECTORS])
def test_recomputing_with_the_stored_salt_reproduces_postgres_exactly(name, password, stored, prepared):
    parsed = parse_scram_verifier(stored)
    assert scram_verifier(password, salt=parsed.salt, iterations=parsed.iterations) == stored


def test_saslprep_is_not_plain_nfkc():
    # NFKC alone would turn the ligature into "fi"; PostgreSQL falls back to the raw bytes
    # because the left-to-right mark is prohibited, and so must we.
    raw = "\ufb01\u200e".encode()
    assert pg_saslprep(raw) == raw
    assert pg_saslprep("\ufb01\u2168".encode()) == b"fiIX"


def test_invalid_utf8_uses_raw_bytes():
    raw = b"\xff\xfepass"
    assert pg_saslprep(raw) == raw
    verifier = scram_verifier(raw)
    assert verifier_matches(verifier, raw)


def test_only_mapped_to_nothing_falls_back_to_raw():
    raw = "\u00ad\u034f".encode()  # soft hyphen, combining grapheme joiner: both B.1
    assert pg_saslprep(raw) == raw


def test_verifier_format_matches_postgres():
    v = scram_verifier("pencil")
    m = re.fullmatch(r"SCRAM-SHA-256\$4096:([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)", v)
    assert m
    assert len(base64.b64decode(m.group(1))) == 16
    assert len(base64.b64decode(m.group(2))) == 32
    assert len(base64.b64decode(m.group(3))) == 32


def test_random_salt_each_time_but_both_match():
    a, b = scram_verifier("pencil"), scram_verifier("pencil")
    assert a != b
    assert verifier_matches(a, "pencil") and verifier_matches(b, "pencil")


def test_custom_iterations_roundtrip():
    v = scram_verifier("pencil", salt=b"0123456789abcdef", iterations=10000)
    assert v.startswith("SCRAM-SHA-256$10000:MDEyMzQ1Njc4OWFiY2RlZg==$")
    assert verifier_matches(v, "pencil")


def test_md5_stored_password_is_an_upgrade_when_it_matches():
    name, password, stored = PG15_MD5
    assert md5_verifier(password, name) == stored
    assert password_status(stored, password, name) == "md5-match-upgrade"
    assert password_status(stored, "other", name) == "mismatch"
    # md5 is salted with the role name: the same password for another role does not match
    assert password_status(stored, password, "someone_else") == "mismatch"
    assert not verifier_matches(stored, password)  # verifier_matches is SCRAM only


@pytest.mark.parametrize("stored", [None, ""])
def test_absent(stored):
    assert password_status(stored, "pencil", "u") == "absent"
    assert not verifier_matches(stored, "pencil")


@pytest.mark.parametrize(
    "stored",
    [
        "plaintext",
        "SCRAM-SHA-256$4096:bad$bad:bad",
        "SCRAM-SHA-256$0:DSnQ52Z7abL24BqhGLjJtg==$CPNXmjosEcdM6gOAZYQy9wu7dfORx4dEQiFTNoHhNnM=:e2edLBqDQKIFEygTvE07wye5/jtJer1NqRezOINd0NQ=",
        "SCRAM-SHA-256$4096:DSnQ52Z7abL24BqhGLjJtg==$AAAA:e2edLBqDQKIFEygTvE07wye5/jtJer1NqRezOINd0NQ=",
        "md5xyz",
    ],
)
def test_malformed_stored_values_never_match(stored):
    assert parse_scram_verifier(stored) is None or stored.startswith("md5")
    assert not verifier_matches(stored, "pencil")
    assert password_status(stored, "pencil", "u") == "mismatch"


@pytest.mark.parametrize("bad", ["", "a\x00b", "x" * 1025])
def test_unusable_passwords_are_refused(bad):
    with pytest.raises(ValueError):
        scram_verifier(bad)


def test_repr_hides_keys():
    parsed = parse_scram_verifier(PG15_VECTORS[0][2])
    assert "CPNXmjos" not in repr(parsed) and "DSnQ52" not in repr(parsed)
    assert str(parsed) == PG15_VECTORS[0][2]
