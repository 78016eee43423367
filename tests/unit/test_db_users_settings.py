"""Settings for deploys/db_users.py are validated before any change; secrets never in errors."""

import hashlib

import pytest

from tasks.operations.db_users import DbSettingsError, load_db_settings
from tasks.core.pg_exec import PgTarget
from tasks.core.pg_sql import DefaultPrivilegeSpec, GrantSpec
from tasks.operations.postgres import _stand_in, password_status_from_digest
from tasks.core.scram import md5_verifier, password_status, scram_verifier

SECRET = "s3cr3t-Value!"


@pytest.fixture
def pwfile(tmp_path):
    path = tmp_path / "quant_user_password"
    path.write_text(SECRET + "\n")
    return str(path)


def lab_like(pwfile, **extra):
    data = {
        "postgres": {"container": "qt-postgres", "host": "127.0.0.1", "port": 15501,
                     "superuser": "postgres", "superuser_password": {"file": pwfile},
                     "access": "docker"},
        "db_roles": [{"name": "quant_user", "password": {"file": pwfile}, "login": True}],
        "db_databases": [{"name": "quant", "owner": "postgres"}],
        "db_grants": [
            {"role": "quant_user", "database": "quant", "privileges": ["CONNECT"]},
            {"role": "quant_user", "database": "quant", "schema": "public", "privileges": ["USAGE"]},
            {"role": "quant_user", "database": "quant", "schema": "public", "on": "tables",
             "privileges": ["select", "INSERT"]},
        ],
        "db_default_privileges": [
            {"owner": "postgres", "role": "quant_user", "database": "quant", "schema": "public",
             "on": "tables", "privileges": ["SELECT"]},
        ],
        "db_exclusive": False,
        "db_verify": True,
    }
    data.update(extra)
    return data


def problems(data, environ=None):
    with pytest.raises(DbSettingsError) as info:
        load_db_settings("db-1", data, environ=environ or {})
    text = str(info.value)
    assert SECRET not in text
    assert all(line.startswith("host 'db-1': ") for line in text.splitlines())
    return text


def test_lab_shape_is_accepted(pwfile):
    s = load_db_settings("db-1", lab_like(pwfile), environ={})
    assert s.target == PgTarget("docker", container="qt-postgres", user="postgres")
    assert [r.name for r in s.roles] == ["quant_user"]
    assert s.roles[0].password == {"file": pwfile}
    assert SECRET not in repr(s)
    assert s.grant_databases() == ["quant"]
    assert s.logins() == {"quant_user": {"file": pwfile}}
    assert s.login_database("quant_user") == "quant"
    kinds = [(type(g).__name__, g.on) for g in s.grants]
    assert kinds == [("GrantSpec", "database"), ("GrantSpec", "schema"), ("GrantSpec", "tables"),
                     ("DefaultPrivilegeSpec", "tables")]
    assert s.grants[2].privileges == frozenset({"SELECT", "INSERT"})


def test_psql_access_uses_host_port_and_password_file_source(pwfile):
    data = lab_like(pwfile)
    data["postgres"]["access"] = "psql"
    s = load_db_settings("db-1", data, environ={})
    assert s.target.mode == "psql" and s.target.host == "127.0.0.1" and s.target.port == 15501
    assert s.target.password_source == {"file": pwfile} and s.target.container is None


def test_access_defaults_to_docker_with_a_container_else_psql(pwfile):
    data = lab_like(pwfile)
    del data["postgres"]["access"]
    assert load_db_settings("db-1", data, environ={}).target.mode == "docker"
    del data["postgres"]["container"]
    assert load_db_settings("db-1", data, environ={}).target.mode == "psql"


def test_unknown_keys_are_named_with_host_and_key(pwfile):
    data = lab_like(pwfile, db_role=[])  # typo of db_roles
    data["postgres"]["acess"] = "psql"
    data["db_roles"][0]["passwd"] = {"env": "X"}
    data["db_grants"][0]["privilege"] = ["CONNECT"]
    text = problems(data)
    assert "db_role: unknown key" in text
    assert "postgres: unknown key 'acess'" in text
    assert "db_roles[0] ('quant_user'): unknown key 'passwd'" in text
    assert "db_grants[0]: unknown key 'privilege'" in text


def test_plaintext_passwords_are_refused_without_echoing_them(pwfile):
    data = lab_like(pwfile)
    data["db_roles"][0]["password"] = SECRET
    data["postgres"]["access"] = "psql"
    data["postgres"]["superuser_password"] = SECRET
    text = problems(data)
    assert "db_roles[0] ('quant_user').password: a plaintext password in host data is refused" in text
    assert "postgres.superuser_password: a plaintext password" in text


@pytest.mark.parametrize("source, expected", [
    ({"env": "QUANT_PW"}, "password environment variable QUANT_PW is unset or empty"),
    ({"file": "/nonexistent/pw"}, "cannot read password file /nonexistent/pw"),
    ({"vault": "x"}, 'must be {"env": "VAR"} or {"file": "/path"}'),
    ({"env": "1BAD"}, "env must name a variable"),
])
def test_password_sources_are_checked_up_front(pwfile, source, expected):
    data = lab_like(pwfile)
    data["db_roles"][0]["password"] = source
    assert expected in problems(data)


def test_env_source_read_from_the_given_environment(pwfile):
    data = lab_like(pwfile)
    data["db_roles"][0]["password"] = {"env": "QUANT_PW"}
    s = load_db_settings("db-1", data, environ={"QUANT_PW": SECRET})
    assert s.roles[0].password == {"env": "QUANT_PW"}


@pytest.mark.parametrize("role, expected", [
    ("", "identifier must not be empty"),
    ("pg_admin", "reserved by PostgreSQL"),
    ("x" * 64, "longer than 63 bytes"),
])
def test_bad_role_names(pwfile, role, expected):
    data = lab_like(pwfile)
    data["db_roles"][0]["name"] = role
    assert expected in problems(data)


def test_names_needing_quotes_are_fine(pwfile):
    data = lab_like(pwfile)
    data["db_roles"].append({"name": 'quant-user"; DROP ROLE x; --', "login": False})
    s = load_db_settings("db-1", data, environ={})
    assert s.roles[1].name == 'quant-user"; DROP ROLE x; --'


def test_bad_grants(pwfile):
    data = lab_like(pwfile)
    data["db_grants"] += [
        {"role": "quant_user", "database": "quant", "privileges": ["SELECT"]},
        {"role": "quant_user", "database": "quant", "on": "tables", "privileges": ["SELECT"]},
        {"role": "quant_user", "database": "quant", "schema": "public", "privileges": "USAGE"},
    ]
    data["db_default_privileges"][0]["on"] = "schema"
    text = problems(data)
    assert "db_grants[3]: privilege 'SELECT' does not apply to database" in text
    assert "db_grants[4]: a grant on tables needs a schema" in text
    assert "db_grants[5].privileges: must be a list" in text
    assert "db_default_privileges[0]: default privileges apply to tables, sequences or functions" in text


def test_duplicate_roles_and_bad_flags(pwfile):
    data = lab_like(pwfile, db_exclusive="yes")
    data["db_roles"].append({"name": "quant_user"})
    data["db_roles"].append({"name": "other", "login": "yes"})
    data["db_roles"].append({"name": "limited", "connection_limit": -5})
    text = problems(data)
    assert "role 'quant_user' is listed twice" in text
    assert "login must be true, false or unset" in text
    assert "connection_limit must be an integer >= -1" in text
    assert "db_exclusive: must be true or false" in text


def test_connection_settings(pwfile):
    data = lab_like(pwfile)
    data["postgres"]["access"] = "ssh"
    assert "postgres.access: must be 'docker' or 'psql'" in problems(data)
    data["postgres"] = {"access": "docker"}
    assert "docker mode needs a container name" in problems(data)
    data["postgres"] = {"access": "psql", "port": 99999, "host": "db"}
    assert "port must be an integer 1-65535" in problems(data)


def test_every_problem_is_reported_at_once(pwfile):
    data = lab_like(pwfile, db_verify=3)
    data["db_roles"][0]["password"] = SECRET
    data["db_databases"][0]["name"] = ""
    text = problems(data)
    assert len(text.splitlines()) == 3


# --- password status from the server's digest (the verifier never leaves the server) ---------

def _server_digest(stored: str) -> str:
    """What tasks.operations.postgres._password_digest_query computes in SQL, in Python."""
    if stored.startswith("SCRAM-SHA-256$"):
        head, params, keys = stored.split("$")
        return f"{head}${params}${hashlib.sha256(keys.encode()).hexdigest()}"
    return "md5$" + hashlib.sha256(stored.encode()).hexdigest()


@pytest.mark.parametrize("stored, password, expected", [
    (None, "pw", "absent"),
    (scram_verifier("pw", salt=b"0123456789abcdef"), "pw", "match"),
    (scram_verifier("pw", iterations=10000), "pw", "match"),
    (scram_verifier("pw"), "other", "mismatch"),
    (md5_verifier("pw", "quant_user"), "pw", "md5-match-upgrade"),
    (md5_verifier("pw", "someone_else"), "pw", "mismatch"),
])
def test_status_from_digest_agrees_with_the_verifier_check(stored, password, expected):
    digest = None if stored is None else _server_digest(stored)
    status = password_status_from_digest(digest, password, "quant_user")
    assert status == expected == password_status(stored, password, "quant_user")
    # the stand-in the planner sees is judged the same way
    assert password_status(_stand_in(status, password, "quant_user"), password, "quant_user") == status


def test_unknown_formats_and_garbage_digests_are_mismatches():
    assert password_status_from_digest("other", "pw", "u") == "mismatch"
    bad_salt = "SCRAM-SHA-256$4096:!!!$" + "0" * 64
    assert password_status_from_digest(bad_salt, "pw", "u") == "mismatch"


def test_grant_specs_are_the_pg_sql_types(pwfile):
    s = load_db_settings("db-1", lab_like(pwfile), environ={})
    assert isinstance(s.grants[0], GrantSpec) and isinstance(s.grants[-1], DefaultPrivilegeSpec)
