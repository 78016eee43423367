"""tasks.core.redact: the one secret rule (names and values) and the host-side filter, held equal
to its Python twin (which the ops tests replay) by running the filter's awk on hostile input."""
from __future__ import annotations

import itertools
import re
import shutil
import subprocess

import pytest

from tasks.core.redact import (
    INSPECT_AWK,
    REDACTED,
    credential_problem,
    env_digest,
    go_json_string,
    is_redacted,
    looks_secret,
    mask_urls,
    redact_env,
    redacted_value,
    same_env_value,
    secret_entry,
)

# The rule as it was written with lookaheads before it had to run in awk too.
OLD_RULE = re.compile(
    r"PASSWORD|PASSWD|SECRET|TOKEN|PRIVATE_KEY|CREDENTIAL|API_?KEY|ACCESS_KEY(?!_ID)|(^|_)DSN$|DATABASE_URL"
    r"|(^|_)PASS(_|$)|(^|_)KEY(_(?!ID$)|$)",
    re.IGNORECASE | re.ASCII,
)
TOKENS = ["PG", "PASSWORD", "ACCESS", "KEY", "ID", "IDS", "I", "API", "TOKEN", "SECRET", "DSN", "PASS",
          "PASSWD", "DATABASE", "URL", "AWS", "X", "PRIVATE", "CREDENTIALS", "APIKEY", "KEYS", "MONKEY", "D"]


def names() -> list[str]:
    out = set()
    for size in (1, 2, 3):
        for combo in itertools.product(TOKENS, repeat=size):
            out.add("_".join(combo))
            out.add("".join(combo))
    out |= {n.lower() for n in list(out)[:2000]}
    out |= {n + "_" for n in list(out)[:500]} | {"_" + n for n in list(out)[:500]}
    return sorted(out)


def run_awk(lines: list[str], keys: str = "") -> list[str]:
    awk = shutil.which("awk")
    assert awk, "awk is needed"
    proc = subprocess.run([awk, "-v", f"keys= {keys} ", INSPECT_AWK], input="\n".join(lines) + "\n",
                          capture_output=True, text=True, env={"LC_ALL": "C"}, check=True)
    return proc.stdout.splitlines()


def test_the_ere_means_what_the_lookahead_rule_meant():
    for name in names():
        assert looks_secret(name) is bool(OLD_RULE.search(name)), name


@pytest.mark.parametrize("name, secret", [
    ("PGPASSWORD", True), ("AWS_SECRET_ACCESS_KEY", True), ("AWS_ACCESS_KEY_ID", False),
    ("MINIO_ACCESS_KEY", True), ("API_TOKEN", True), ("DATABASE_URL", True), ("SENTRY_DSN", True),
    ("KEY", True), ("KEY_ID", False), ("SSH_KEY_PATH", True), ("MONKEY", False), ("PASSPORT", False),
    ("DB_PASS", True), ("pgpassword", True), ("PAſſWORD", False),  # non-ASCII is not upper-cased
])
def test_looks_secret(name, secret):
    assert looks_secret(name) is secret


def test_awk_names_the_same_secrets_as_python():
    sample = names()
    lines = [f"E {go_json_string(name + '=v')}\t{(name + '=v').encode().hex()}" for name in sample]
    out = run_awk(lines)
    assert len(out) == len(sample)
    for name, line in zip(sample, out):
        assert line.startswith("S ") is looks_secret(name), (name, line)


HOSTILE_VALUES = [
    "postgresql://u:pw@h/db", "postgresql://u:p@ss@h/db", "postgresql://u@h/db", "http://h:80/x",
    "http://h:80/x?mail=a@b", "redis://:pw@r:6379/0", 's3://k:p"w@b', "s3://k:p\\w@b", "x://a:b",
    "mysql://root:p w@h", "prefix postgresql://u:pw@h/db suffix", "-----BEGIN PRIVATE KEY-----\nabc",
    "plain", "", "a=b=c", "line1\nline2", "tab\there", "quote\"s", "back\\slash", "uni héllo \u2028",
    "http://u:pw@h http://v:qq@k", "ftp://:@h",
]


@pytest.mark.parametrize("keys", ["", "PLAIN_NAME"])
def test_awk_decides_each_entry_as_python_does(keys):
    entries = [f"PLAIN_NAME={v}" for v in HOSTILE_VALUES] + [f"{k}=x" for k in ('WE"IRD', "WE\\IRD", "NOEQ")]
    entries.append("NOEQUALS_AT_ALL")
    lines = [f"E {go_json_string(e)}\t{e.encode().hex()}" for e in entries]
    out = run_awk(lines, keys)
    for entry, line in zip(entries, out):
        expected = secret_entry(entry, [k for k in keys.split(",") if k])
        assert line.startswith("S ") is expected, (entry, line)
        if expected:  # the hex goes on to the digest loop; the value itself never does
            assert line.split(" ")[1] == entry.encode().hex()
        else:
            assert line == f"E {go_json_string(entry)}"


def test_awk_masks_urls_in_the_document_as_python_does():
    strings = [v for v in HOSTILE_VALUES if "PRIVATE" not in v]
    document = "{" + ",".join(f'"k{i}":{go_json_string(v)}' for i, v in enumerate(strings)) + "}"
    (line,) = run_awk([f"O {document}"])
    expected = "{" + ",".join(f'"k{i}":{go_json_string(mask_urls(v))}' for i, v in enumerate(strings)) + "}"
    assert line == f"O {expected}"


def test_awk_drops_every_env_list_and_refuses_what_it_cannot_read():
    document = '{"Config":{"Env":["A=1","PGPASSWORD=x\\"y\\\\"],"Cmd":["a"]},"ContainerConfig":{"Env":[]}}'
    (line,) = run_awk([f"O {document}"])
    assert line == 'O {"Config":{"Env":null,"Cmd":["a"]},"ContainerConfig":{"Env":null}}'
    (line,) = run_awk(['O {"Config":{"Env":["unterminated]}}'])
    assert line.startswith("ERR ") and "unterminated" not in line


def test_other_lines_become_errors_without_their_text():
    assert run_awk(["### quantlab image", "ERR x", "stray secret", "E no-tab"]) == [
        "### quantlab image", "ERR x", "ERR docker inspect printed an unexpected line",
        "ERR docker inspect printed an unexpected line"]


@pytest.mark.parametrize("text, masked", [
    ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
    ("redis://:pw@r:6379", "redis://:***@r:6379"),
    ("postgresql://mlflow@db:5432/mlflow", "postgresql://mlflow@db:5432/mlflow"),
    ("http://0.0.0.0:5000", "http://0.0.0.0:5000"),
    # the password runs to the string's last @: two URLs in one string are masked as one
    ("a http://u:1@h and b://v:2@k", "a http://u:***@k"),
])
def test_mask_urls(text, masked):
    assert mask_urls(text) == masked


@pytest.mark.parametrize("value, problem", [
    ("postgresql://u:pw@h/db", "URL with a password"),
    ("redis://:pw@redis:6379/0", "URL with a password"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----", "private key"),
    ("postgresql://u@h/db", None), ("http://minio:9000", None), ("s3://bucket/path", None), ("true", None),
])
def test_credential_problem_never_quotes_the_value(value, problem):
    found = credential_problem(value)
    if problem is None:
        assert found is None
    else:
        assert problem in found and "pw" not in found


def test_digests():
    salt, entry = "quant-mlflow", "PGPASSWORD=s3cret"
    digest = env_digest(salt, entry)
    assert len(digest) == 64 and digest != env_digest("other-name", entry)
    token = redacted_value(salt, "PGPASSWORD", "s3cret")
    assert token == REDACTED + digest and is_redacted(token) and not is_redacted("sha256:" + digest)
    assert same_env_value(salt, "PGPASSWORD", token, "s3cret")
    assert same_env_value(salt, "PGPASSWORD", "s3cret", token)
    assert same_env_value(salt, "PGPASSWORD", token, token)
    assert not same_env_value(salt, "PGPASSWORD", token, "other")
    assert not same_env_value(salt, "PGPASSWORD", None, "s3cret")
    assert redact_env(["A=1", entry], salt) == ["A=1", "PGPASSWORD=" + token[len(""):]]


# -- files the deploys read and rewrite -------------------------------------------------------------

HOSTILE_FILE = """services:
  db:
    environment:
      POSTGRES_PASSWORD: hunter2-literal
      POSTGRES_PASSWORD_FILE: /run/secrets/db
      PGPASSWORD: ${PGPASSWORD}
      - "API_TOKEN=abc-literal"
      SECRET_KEY: ""
      DATABASE_URL: postgresql://u:pw-literal@h/db
      OTHER: postgresql://u:${PW}@h/db
      AWS_ACCESS_KEY_ID: AKIA
      EMPTY_TOKEN: ~
    command: --opt "x"  # SECRET: in a comment is not a key
key: |
  -----BEGIN RSA PRIVATE KEY-----
  MIIE-literal
  -----END RSA PRIVATE KEY-----
after: fine
ENV TOKEN=abc-literal
ARG NPM_TOKEN
export DB_PASS='q-literal'
"""


def test_text_filter_in_awk_and_python_agree():
    from tasks.core.redact import TEXT_AWK, text_secret_lines

    expected = text_secret_lines(HOSTILE_FILE)
    assert expected == [
        "line 4: POSTGRES_PASSWORD holds a literal value", "line 7: API_TOKEN holds a literal value",
        "line 9: a URL with a password", "line 9: DATABASE_URL holds a literal value",
        "line 14: key holds a literal value", "line 15: a private key",
        "line 19: TOKEN holds a literal value", "line 21: DB_PASS holds a literal value"]
    awk = shutil.which("awk")
    out = subprocess.run([awk, TEXT_AWK], input=HOSTILE_FILE, capture_output=True, text=True,
                         env={"LC_ALL": "C"}, check=True).stdout.splitlines()
    assert out == expected


def test_config_text_fact_sends_a_clean_file_and_never_a_secret_one(tmp_path):
    from tasks.facts.compose import ConfigText

    clean = tmp_path / "clean.yml"
    clean.write_text("services:\n  backend:\n    environment:\n      PGPASSWORD: ${PGPASSWORD}\n")
    dirty = tmp_path / "dirty.yml"
    dirty.write_text(HOSTILE_FILE)
    fact = ConfigText()
    for path, lines, hits in ((clean, clean.read_text().splitlines(), []),
                              (dirty, None, 8), (tmp_path / "missing.yml", None, [])):
        proc = subprocess.run(["/bin/sh", "-c", fact.command(str(path))], capture_output=True, text=True,
                              check=True)
        assert "literal" not in proc.stdout.replace("holds a literal value", "")
        result = fact.process(proc.stdout.splitlines())
        assert result["lines"] == lines
        assert (len(result["secret_lines"]) == hits) if isinstance(hits, int) else result["secret_lines"] == hits


def test_log_lines_are_masked_in_awk_as_in_python():
    from tasks.core.redact import MASK_LINES_AWK, mask_line

    lines = ["2026-01-01T00:00:00Z connecting to postgresql://quant:pw-literal@db:5432/quant",
             'url="redis://:pw-literal@redis:6379/0" retry', "plain line", "",
             "two http://a:x@h and https://b:y@k", "no password http://user@host/x"]
    out = subprocess.run([shutil.which("awk"), MASK_LINES_AWK], input="\n".join(lines) + "\n",
                         capture_output=True, text=True, env={"LC_ALL": "C"}, check=True).stdout.splitlines()
    assert out == [mask_line(line) for line in lines]
    assert "pw-literal" not in "\n".join(out)
    assert out[-1] == lines[-1] and out[2] == "plain line"


def test_what_operations_carry_never_prints_a_secret():
    # pyinfra names an operation called without name= by str() of its arguments, and a
    # FunctionCommand's repr holds its arguments: neither may show a value.
    from pyinfra.api import FunctionCommand
    from pyinfra.api.operation import attach_args
    from pyinfra.api.state import StateOperationMeta

    from tasks.core.container_spec import ContainerSpec
    from tasks.core.create_body import CreateRequest
    from tasks.settings import load
    from tasks.settings.mlflow import resolve_secret_env

    secret = "s3cret-value-x"
    spec = ContainerSpec(name="m", image="i", env={"PGPASSWORD": secret}, secret_env_keys=frozenset({"PGPASSWORD"}))
    settings = load("mlflow", "h1", {"secret_env": {"PGPASSWORD": {"env": "QT_TEST_PW"}}})
    values = resolve_secret_env("h1", settings, environ={"QT_TEST_PW": secret})
    assert values == {"PGPASSWORD": secret}
    meta = attach_args(StateOperationMeta(("x",)), (spec,), {"secret_values": values, "spec": spec})
    shown = " ".join(meta.args) + repr(FunctionCommand(print, (spec, values), {}))
    shown += repr(CreateRequest("m", {"Env": [f"PGPASSWORD={secret}"]}))
    assert secret not in shown and "PGPASSWORD" in shown
